"""Graph serializer: a compact graph description (Graph) -> the UI-format workflow (what ComfyUI's
Templates dialog lists) and its API-format twin (what the server's /prompt takes), built together so
the two can never drift apart.

Layout: every executed node belongs to a group (a LiteGraph group: a titled frame the frontend moves
with its nodes). Groups sit in lanes left to right (a group may be stacked below another one), the
nodes of a group in its own columns; the group frames are computed from the nodes' positions and
sizes, so each frame encloses exactly its nodes and no two frames overlap. The note(s) stay outside
the groups, leftmost. A node may be drawn collapsed (flags.collapsed: only its title bar shows); that
is UI-only, the API format has no flags and no groups.

Input sockets, widget order and the UI-only widget values (control_after_generate after a seed, the
upload button of LoadImage) follow the node definitions: the pack's own INPUT_TYPES and, for the
ComfyUI core nodes used, CORE_NODES below (ComfyUI 0.3.64, frontend 1.27.10, docs/comfyui.md §8–§10).
tests/test_workflows.py checks every output against the nodes and the UI->API conversion.
"""
from __future__ import annotations

import json
import uuid

from wan_core.io.tensor_files import MODEL_SUFFIXES

from .pack import pack_id_and_version

CORE_VER = "0.3.64"
FRONTEND_VERSION = "1.27.10"
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
OPTIONAL_SHAPE = 7  # RenderShape.HollowCircle: how the frontend draws (and saves) optional inputs

# ComfyUI core nodes the workflows use: (INPUT_TYPES as /object_info shows them, RETURN_TYPES, output names, title).
CORE_NODES = {
    "LoadImage": ({"required": {"image": ([], {"image_upload": True})}},  # options: the files in input/
                  ("IMAGE", "MASK"), ("IMAGE", "MASK"), "Load Image"),
    "CreateVideo": ({"required": {"images": ("IMAGE", {}),
                                  "fps": ("FLOAT", {"default": 30.0, "min": 1.0, "max": 120.0, "step": 1.0})},
                     "optional": {"audio": ("AUDIO", {})}},
                    ("VIDEO",), ("VIDEO",), "Create Video"),
    "PreviewImage": ({"required": {"images": ("IMAGE", {})}}, (), (), "Preview Image"),
    "SaveImage": ({"required": {"images": ("IMAGE", {}), "filename_prefix": ("STRING", {"default": "ComfyUI"})}},
                  (), (), "Save Image"),
    # no display name in ComfyUI's NODE_DISPLAY_NAME_MAPPINGS: the class name is the title
    "EmptyImage": ({"required": {"width": ("INT", {"default": 512, "min": 1, "max": 16384, "step": 1}),
                                 "height": ("INT", {"default": 512, "min": 1, "max": 16384, "step": 1}),
                                 "batch_size": ("INT", {"default": 1, "min": 1, "max": 4096}),
                                 "color": ("INT", {"default": 0, "min": 0, "max": 0xFFFFFF, "step": 1,
                                                   "display": "color"})}},
                   ("IMAGE",), ("IMAGE",), "EmptyImage"),
    "SaveVideo": ({"required": {"video": ("VIDEO", {}), "filename_prefix": ("STRING", {"default": "video/ComfyUI"}),
                                "format": (["auto", "mp4"], {"default": "auto"}),
                                "codec": (["auto", "h264"], {"default": "auto"})}},
                  (), (), "Save Video"),
}



# LiteGraph geometry (frontend 1.27): a node's title bar (NODE_TITLE_HEIGHT) is drawn above its `pos`;
# a group's title bar is font_size * 1.4 high, at the top inside its `bounding` [x, y, width, height].
NODE_TITLE_HEIGHT = 30
GROUP_FONT_SIZE = 24
GROUP_TITLE_HEIGHT = round(GROUP_FONT_SIZE * 1.4)
GROUP_PADDING = 20  # between a group's frame (below its title bar) and its nodes
COLUMN_GAP, ROW_GAP, GROUP_GAP = 50, 30, 60
ORIGIN = (40, 40)
# the group titles the workflows use, in pipeline order, with their frame colours (LiteGraph's
# groupcolor palette: pale_blue, green, brown, purple, yellow)
GROUP_COLOURS = {
    "models": "#3f789e",
    "data": "#8A8",
    "training": "#b06634",
    "generation": "#a1309b",
    "outputs": "#b58b2a",
}


class Graph:
    """Nodes in groups; in a group, in columns (left to right, stacked top to bottom); links by input
    and output name. Groups take the next lane to the right unless placed `below` another group."""

    def __init__(self, name: str, title: str):
        self.name, self.title = name, title
        self.nodes: list[dict] = []
        self.groups: dict[str, dict] = {}  # title -> {"lane": int}

    def group(self, title: str, below: str | None = None) -> str:
        """Declare group `title` (implicitly: in the next lane on first use); `below`: stacked under that group."""
        assert title in GROUP_COLOURS, f"{self.name}: group title {title!r} not one of {list(GROUP_COLOURS)}"
        if title not in self.groups:
            lane = self.groups[below]["lane"] if below else 1 + max((v["lane"] for v in self.groups.values()),
                                                                    default=-1)
            self.groups[title] = {"lane": lane}
        return title

    def add(self, key: str, type_: str, group: str, col: int, widgets: dict | None = None, links: dict | None = None,
            models: list | None = None, title: str | None = None, size: tuple | None = None,
            collapsed: bool = False) -> str:
        """A node in `group`, column `col` of that group. widgets: {input name: value}, plus
        "<name>:control" for a control_after_generate value. links: {input name: (node key, output name)}.
        collapsed: drawn as its title bar only (the frontend's Collapse)."""
        assert key not in {n["key"] for n in self.nodes}, f"{self.name}: duplicate node key {key}"
        self.group(group)
        self.nodes.append(dict(key=key, type=type_, group=group, col=col, widgets=widgets or {}, links=links or {},
                               models=models or [], title=title, size=size, collapsed=collapsed))
        return key

    def note(self, key: str, title: str, text: str, size: tuple) -> str:
        """A MarkdownNote (drawn by the frontend only, not in the API format), outside the groups, leftmost."""
        self.nodes.append(dict(key=key, type="MarkdownNote", group=None, col=0, text=text, title=title, size=size,
                               links={}, collapsed=False))
        return key


def node_defs(pack) -> dict:
    """type -> (INPUT_TYPES, RETURN_TYPES, output names, display title, cnr_id, ver)."""
    defs = {k: (*v, "comfy-core", CORE_VER) for k, v in CORE_NODES.items()}
    pack_id, pack_version = pack_id_and_version()
    for name, cls in pack.NODE_CLASS_MAPPINGS.items():
        names = getattr(cls, "RETURN_NAMES", None) or cls.RETURN_TYPES
        defs[name] = (cls.INPUT_TYPES(), tuple(cls.RETURN_TYPES), tuple(names),
                      pack.NODE_DISPLAY_NAME_MAPPINGS.get(name, name), pack_id, pack_version)
    return defs


def inputs_of(spec: dict):
    """[(name, type, options, opts, optional)] in INPUT_TYPES order; combos get type COMBO."""
    out = []
    for section in ("required", "optional"):
        for name, entry in spec.get(section, {}).items():
            kind, opts = entry[0], (entry[1] if len(entry) > 1 else {})
            if isinstance(kind, (list, tuple)):
                out.append((name, "COMBO", list(kind), opts, section == "optional"))
            else:
                out.append((name, kind, None, opts, section == "optional"))
    return out


def check_value(where: str, kind: str, options, opts: dict, value):
    if kind == "COMBO":
        # file dropdowns list local files: any model file name (or, with an upload button, input file) goes
        ok = value in (options or []) or isinstance(value, str) and (
            value.endswith(MODEL_SUFFIXES) or bool(opts.get("image_upload")))
        assert ok, f"{where}: {value!r} not in {options}"
    elif kind == "INT":
        assert isinstance(value, int) and not isinstance(value, bool), where
    elif kind == "FLOAT":
        assert isinstance(value, (int, float)) and not isinstance(value, bool), where
    elif kind == "STRING":
        assert isinstance(value, str), where
    elif kind == "BOOLEAN":
        assert isinstance(value, bool), where
    if kind in ("INT", "FLOAT"):
        assert opts.get("min", value) <= value <= opts.get("max", value), f"{where}: {value} out of range"


def estimate_size(n_rows: int, widgets: list[tuple[str, dict]]) -> list[int]:
    """A plausible node size (the frontend keeps what the file says; users resize freely)."""
    height = 30 + 22 * n_rows
    for kind, opts in widgets:
        height += 110 if kind == "STRING" and opts.get("multiline") else 24
    return [360, height + 8]


def build(g: Graph, defs: dict) -> tuple[dict, dict]:
    """(UI-format workflow, API-format prompt) of `g`, its nodes checked against `defs` (node_defs)."""
    ids = node_ids(g)
    by_key = {n["key"]: n for n in g.nodes}
    for n in g.nodes:
        assert n["type"] == "MarkdownNote" or n["type"] in defs, f"{g.name}: unknown node type {n['type']}"

    # links, numbered in the order of the nodes and their inputs
    links, out_links, in_link = [], {}, {}
    ui_nodes = {}
    for n in g.nodes:
        if n["type"] == "MarkdownNote":
            continue
        spec, returns, out_names, *_ = defs[n["type"]]
        sockets = [(name, kind, optional) for name, kind, _, _, optional in inputs_of(spec) if kind not in WIDGET_TYPES]
        widgets = [(name, kind, optional) for name, kind, _, _, optional in inputs_of(spec) if kind in WIDGET_TYPES]
        unknown = set(n["links"]) - {s[0] for s in sockets}
        assert not unknown, f"{g.name}/{n['key']}: no socket input {unknown}"
        # frontend 1.27 (litegraphService #addInputs): socket-only inputs first, then one socket per widget
        order = sockets + widgets
        for slot, (name, kind, _) in enumerate(order):
            if name in n["links"]:
                src, out_name = n["links"][name]
                src_names = defs[by_key[src]["type"]][2]
                o_slot = src_names.index(out_name)
                o_type = defs[by_key[src]["type"]][1][o_slot]
                # type sets must overlap (a union output like "WANFLOW_MODEL,MODEL" links into either)
                assert set(o_type.split(",")) & set(kind.split(",")) or kind == "*", \
                    f"{g.name}: {src}.{out_name} ({o_type}) -> {n['key']}.{name} ({kind})"
                link_id = len(links) + 1
                # the frontend stores input.type || output.type as the link type
                links.append([link_id, ids[src], o_slot, ids[n["key"]], slot, kind])
                out_links.setdefault((src, o_slot), []).append(link_id)
                in_link[(n["key"], name)] = link_id
        for name, kind, optional in sockets:
            assert optional or name in n["links"], f"{g.name}/{n['key']}: required input {name} not connected"
        ui_nodes[n["key"]] = order

    order_index = topological_order(g, by_key)
    sizes = {}
    for n in g.nodes:
        if n["size"]:
            sizes[n["key"]] = list(n["size"])
        else:
            spec, returns = defs[n["type"]][:2]
            specs = inputs_of(spec)
            n_sock = sum(1 for s in specs if s[1] not in WIDGET_TYPES)
            widget_specs = [(s[1], s[3]) for s in specs if s[1] in WIDGET_TYPES]
            widget_specs += [("INT", {})] * sum(1 for s in specs if s[3].get("control_after_generate"))
            sizes[n["key"]] = estimate_size(max(n_sock, len(returns)), widget_specs)
            if n["type"].startswith("WanFlowLoad"):  # room for the long file names
                sizes[n["key"]][0] = 420
    pos, frames = layout(g, sizes)

    nodes_ui, prompt = [], {}
    for n in g.nodes:
        nid = ids[n["key"]]
        flags = {"collapsed": True} if n["collapsed"] else {}
        base = {"id": nid, "type": n["type"], "pos": pos[n["key"]], "size": sizes[n["key"]], "flags": flags,
                "order": order_index[n["key"]], "mode": 0}
        if n["type"] == "MarkdownNote":
            nodes_ui.append({**base, "inputs": [], "outputs": [], "title": n["title"], "properties": {},
                             "widgets_values": [n["text"]], "color": "#432", "bgcolor": "#653"})
            continue
        spec, returns, out_names, title, cnr_id, ver = defs[n["type"]]
        specs = {s[0]: s for s in inputs_of(spec)}
        inputs = []
        for name, kind, optional in ui_nodes[n["key"]]:
            slot = {"localized_name": name, "name": name}
            if optional:
                slot["shape"] = OPTIONAL_SHAPE
            slot["type"] = kind
            if kind in WIDGET_TYPES:
                slot["widget"] = {"name": name}
            slot["link"] = in_link.get((n["key"], name))
            inputs.append(slot)
        values, api_inputs, upload = [], {}, False
        extra = set(n["widgets"]) - set(specs) - {f"{k}:control" for k in specs}
        assert not extra, f"{g.name}/{n['key']}: unknown widgets {extra}"
        for name, (_, kind, options, opts, _) in specs.items():
            if kind not in WIDGET_TYPES:
                continue
            value = n["widgets"][name] if name in n["widgets"] else opts["default"]
            check_value(f"{g.name}/{n['key']}.{name}", kind, options, opts, value)
            values.append(value)
            api_inputs[name] = value
            if opts.get("control_after_generate"):
                values.append(n["widgets"].get(f"{name}:control", "fixed"))
            upload |= bool(opts.get("image_upload"))
        if upload:  # LoadImage: the upload button ("image"), the frontend's last widget, never sent to the server
            inputs.append({"localized_name": "upload", "name": "upload", "type": "IMAGEUPLOAD",
                           "widget": {"name": "upload"}, "link": None})
            values.append("image")
        for name, _, _ in ui_nodes[n["key"]]:  # graphToPrompt: widget values, then links in socket order
            if name in n["links"]:
                src, out_name = n["links"][name]
                api_inputs[name] = [str(ids[src]), defs[by_key[src]["type"]][2].index(out_name)]
        outputs = []
        for slot, (kind, name) in enumerate(zip(returns, out_names)):
            outputs.append({"localized_name": name, "name": name, "type": kind,
                            "links": out_links.get((n["key"], slot), []), "slot_index": slot})
        properties = {"Node name for S&R": n["type"], "cnr_id": cnr_id, "ver": ver}
        if n["models"]:
            properties["models"] = n["models"]
        node = {**base, "inputs": inputs, "outputs": outputs}
        if n["title"]:
            node["title"] = n["title"]
        nodes_ui.append({**node, "properties": properties, "widgets_values": values})
        prompt[str(nid)] = {"class_type": n["type"], "inputs": api_inputs, "_meta": {"title": n["title"] or title}}

    ui = {
        "id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"https://github.com/wan-flow/wan-flow/workflows/{g.name}")),
        "revision": 0,
        "last_node_id": len(g.nodes),
        "last_link_id": len(links),
        "nodes": sorted(nodes_ui, key=lambda node: node["id"]),
        "links": links,
        "floatingLinks": [],
        # LGraphGroup.serialize (frontend 1.27): id, title, bounding [x, y, w, h], color, font_size, flags
        "groups": [{"id": i, "title": title, "bounding": frames[title], "color": GROUP_COLOURS[title],
                    "font_size": GROUP_FONT_SIZE, "flags": {}} for i, title in enumerate(g.groups, start=1)],
        "definitions": {"subgraphs": []},
        "config": {"links_ontop": False, "align_to_grid": False},
        "extra": {"ds": {"scale": 0.8, "offset": [0, 0]}, "frontendVersion": FRONTEND_VERSION, "reroutes": [],
                  "linkExtensions": []},
        "version": 0.4,
    }
    return ui, prompt


def node_ids(g: Graph) -> dict:
    """node key -> node id: the executed nodes first (API ids 1, 2, ... in the catalogue's order), the notes last."""
    ranked = sorted(g.nodes, key=lambda n: n["type"] == "MarkdownNote")
    return {n["key"]: i for i, n in enumerate(ranked, start=1)}


def footprint(n: dict, size: list) -> int:
    """The height a node takes on the canvas: its title bar, plus its body unless collapsed."""
    return NODE_TITLE_HEIGHT + (0 if n["collapsed"] else size[1])


def place_block(nodes: list[dict], sizes: dict, x0: int, y0: int, framed: bool, pos: dict) -> tuple[int, int]:
    """Place `nodes` in their columns with the block's top-left corner at (x0, y0) (inside a group frame:
    below its title bar, `GROUP_PADDING` from its edges); returns the block's (width, height)."""
    pad = GROUP_PADDING if framed else 0
    top = y0 + (GROUP_TITLE_HEIGHT + pad if framed else 0)
    x, bottom = x0 + pad, top
    for c in sorted({n["col"] for n in nodes}):
        column = [n for n in nodes if n["col"] == c]
        y = top
        for n in column:
            pos[n["key"]] = [x, y + NODE_TITLE_HEIGHT]  # pos is the body's corner; the title bar is above it
            y += footprint(n, sizes[n["key"]]) + ROW_GAP
        bottom = max(bottom, y - ROW_GAP)
        x += max(sizes[n["key"]][0] for n in column) + COLUMN_GAP
    return x - COLUMN_GAP + pad - x0, bottom + pad - y0


def layout(g: Graph, sizes: dict) -> tuple[dict, dict]:
    """(node key -> pos, group title -> bounding [x, y, w, h]): the notes leftmost, then the groups' lanes
    left to right, groups of one lane stacked top to bottom; each frame is its nodes' block."""
    pos, frames = {}, {}
    x = ORIGIN[0]
    loose = [n for n in g.nodes if n["group"] is None]
    if loose:
        width, _ = place_block(loose, sizes, x, ORIGIN[1], False, pos)
        x += width + GROUP_GAP
    for lane in sorted({v["lane"] for v in g.groups.values()}):
        y, lane_width = ORIGIN[1], 0
        for title in (t for t, v in g.groups.items() if v["lane"] == lane):
            members = [n for n in g.nodes if n["group"] == title]
            assert members, f"{g.name}: group {title!r} has no nodes"
            width, height = place_block(members, sizes, x, y, True, pos)
            frames[title] = [x, y, width, height]
            y += height + GROUP_GAP
            lane_width = max(lane_width, width)
        x += lane_width + GROUP_GAP
    return pos, frames


def topological_order(g: Graph, by_key: dict) -> dict:
    """Execution order as the frontend stores it in `order`: sources first, ties by position in the list."""
    deps = {n["key"]: {src for src, _ in n.get("links", {}).values()} for n in g.nodes}
    done, order = [], {}
    while len(done) < len(g.nodes):
        ready = [n["key"] for n in g.nodes if n["key"] not in order and deps[n["key"]] <= set(done)]
        assert ready, f"{g.name}: cycle"
        key = ready[0]
        order[key] = len(done)
        done.append(key)
    return order


def json_text(obj) -> str:
    """A workflow file's text, as the committed files are written."""
    return json.dumps(obj, indent=1, ensure_ascii=False) + "\n"
