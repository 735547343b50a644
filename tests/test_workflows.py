"""The shipped workflows fit the pack's nodes (no ComfyUI needed).

For every UI-format workflow in workflows/*.json (what ComfyUI lists under Templates) this checks
node types, widget values against INPUT_TYPES, link consistency, and that its API-format twin in
workflows/api/ is exactly the UI graph converted the way the frontend does it (docs/comfyui.md §10);
that no shipped workflow uses a deprecated node; that every workflow is laid out in groups (each frame
encloses its nodes, frames do not overlap, the catalogue's grouping is what the file shows); and that
each trainer's settings node is drawn collapsed and wired to its `settings` input.
"""
import importlib.util
import json
from pathlib import Path

import pytest
from test_nodes import import_pack

from tools.workflows import catalogue
from tools.workflows.serializer import GROUP_COLOURS, build, node_defs, node_ids
from wan_core.io.tensor_files import MODEL_SUFFIXES

PACK_DIR = Path(__file__).resolve().parents[1]
WORKFLOWS = PACK_DIR / "workflows"
UI_FILES = sorted(WORKFLOWS.glob("*.json"))
# Drawn by the frontend only: never in /object_info, never sent to the server.
FRONTEND_ONLY = {"Note", "MarkdownNote", "PrimitiveNode", "Reroute"}
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
CONTROL_VALUES = {"fixed", "increment", "decrement", "randomize"}
# file dropdowns that also offer built-in entries (so their option list is never empty): a model file
# name is as valid in them as in an empty dropdown
FILE_DROPDOWNS_WITH_BUILTINS = {("WanFlowLoadRewardModel", "reward")}
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")
# settings node -> the trainers whose `settings` input it feeds
SETTINGS_NODES = {"WanFlowTrainingSettings": {"WanFlowLoRATraining", "WanFlowFullTraining"},
                  "WanFlowSRPOSettings": {"WanFlowSRPOTraining"}}
TRAINERS = {t: s for s, ts in SETTINGS_NODES.items() for t in ts}
# LiteGraph geometry: a node's title bar is drawn above its pos; a group's title bar (font_size * 1.4)
# is the top of its bounding box
NODE_TITLE_HEIGHT = 30
GROUP_KEYS = {"id", "title", "bounding", "color", "font_size", "flags"}


class _Native:
    """INPUT_TYPES / RETURN_TYPES of the ComfyUI core nodes our workflows use (ComfyUI 0.3.64: nodes.py,
    comfy_extras/nodes_video.py as /object_info shows them); the COMFYUI_DIR end-to-end test checks the
    same workflows against the real ones."""

    def __init__(self, inputs: dict, returns: tuple, optional: dict | None = None):
        self.spec, self.RETURN_TYPES = {"required": inputs, **({"optional": optional} if optional else {})}, returns


NATIVE_NODES = {
    "EmptyImage": _Native({"width": ("INT", {"min": 1, "max": 16384}), "height": ("INT", {"min": 1, "max": 16384}),
                           "batch_size": ("INT", {"min": 1, "max": 4096}), "color": ("INT", {"min": 0, "max": 0xFFFFFF})},
                          ("IMAGE",)),
    "SaveImage": _Native({"images": ("IMAGE", {}), "filename_prefix": ("STRING", {})}, ()),
    "PreviewImage": _Native({"images": ("IMAGE", {})}, ()),
    # the dropdown lists the files in ComfyUI's input/ folder (unknown here: empty, like a file dropdown)
    "LoadImage": _Native({"image": ([], {"image_upload": True})}, ("IMAGE", "MASK")),
    "CreateVideo": _Native({"images": ("IMAGE", {}), "fps": ("FLOAT", {"default": 30.0, "min": 1.0, "max": 120.0})},
                           ("VIDEO",), optional={"audio": ("AUDIO", {})}),
    "SaveVideo": _Native({"video": ("VIDEO", {}), "filename_prefix": ("STRING", {}),
                          "format": (["auto", "mp4"], {}), "codec": (["auto", "h264"], {})}, ()),
}


@pytest.fixture(scope="module")
def nodes(tmp_path_factory):
    """NODE_CLASS_MAPPINGS with an empty model folder, as in CI: file dropdowns list nothing."""
    import os
    old = os.environ.get("WANFLOW_MODELS_DIR")
    os.environ["WANFLOW_MODELS_DIR"] = str(tmp_path_factory.mktemp("no_models"))
    try:
        mappings = import_pack().NODE_CLASS_MAPPINGS
        found = {name: (cls, cls.INPUT_TYPES()) for name, cls in mappings.items()}
        yield {**{name: (n, n.spec) for name, n in NATIVE_NODES.items()}, **found}
    finally:
        if old is None:
            os.environ.pop("WANFLOW_MODELS_DIR", None)
        else:
            os.environ["WANFLOW_MODELS_DIR"] = old


def input_specs(spec: dict) -> list[tuple[str, str, object, dict]]:
    """[(name, type, combo options or None, options dict)] in INPUT_TYPES order (required, optional)."""
    out = []
    for section in ("required", "optional"):
        for name, entry in spec.get(section, {}).items():
            kind, opts = entry[0], (entry[1] if len(entry) > 1 else {})
            if isinstance(kind, (list, tuple)):
                out.append((name, "COMBO", list(kind), opts))
            else:
                out.append((name, kind, None, opts))
    return out


def widget_values_by_name(spec: dict, values: list) -> dict:
    """Positional widgets_values -> {input name: value}; drops the UI-only entries: the
    control_after_generate value after its widget, and the upload button of an image_upload combo
    (LoadImage), which the frontend adds as the node's last widget with the value "image"."""
    named, i, upload = {}, 0, False
    for name, kind, _, opts in input_specs(spec):
        if kind not in WIDGET_TYPES:
            continue  # socket-only input: no widget slot
        assert i < len(values), f"widgets_values too short: no value for {name!r}"
        named[name] = values[i]
        i += 1
        if opts.get("control_after_generate"):
            assert i < len(values) and values[i] in CONTROL_VALUES, f"{name}: missing control_after_generate value"
            i += 1
        upload |= bool(opts.get("image_upload"))
    if upload:
        assert i < len(values) and values[i] == "image", "image_upload: missing the upload button's \"image\" value"
        i += 1
    assert i == len(values), f"widgets_values has {len(values)} entries, INPUT_TYPES needs {i}"
    return named


def ui_to_api(wf: dict, nodes: dict) -> dict:
    """UI graph -> API prompt, as the frontend's graphToPrompt does for plain graphs (no subgraphs)."""
    by_id = {n["id"]: n for n in wf["nodes"]}
    links = {link[0]: link for link in wf["links"]}
    prompt = {}
    for node in wf["nodes"]:
        if node["type"] in FRONTEND_ONLY or node.get("mode", 0) != 0:
            continue
        spec = nodes[node["type"]][1]
        inputs = widget_values_by_name(spec, node.get("widgets_values") or [])
        for socket in node.get("inputs", []):
            if socket.get("link") is not None:
                _, origin, slot, *_ = links[socket["link"]]
                assert by_id[origin].get("mode", 0) == 0, "links from muted/bypassed nodes are not handled here"
                inputs[socket["name"]] = [str(origin), slot]
        prompt[str(node["id"])] = {"class_type": node["type"], "inputs": inputs}
    return prompt


def test_there_are_workflows():
    assert UI_FILES, "no UI workflows in workflows/"


def ui_to_api_name(path: Path) -> Path:
    return path.parent / "api" / path.name


@pytest.mark.parametrize("path", UI_FILES, ids=lambda p: p.name)
def test_ui_workflow_matches_nodes(path, nodes):
    check_nodes(json.loads(path.read_text()), nodes, path.name)


@pytest.mark.parametrize("path", UI_FILES, ids=lambda p: p.name)
def test_ui_workflow_links_are_consistent(path, nodes):
    check_links(json.loads(path.read_text()), nodes, path.name)


def check_nodes(wf, nodes, fname):
    assert wf.get("version") == 0.4 and isinstance(wf.get("nodes"), list) and isinstance(wf.get("links"), list), \
        "not a UI-format (0.4) workflow"
    ids = [n["id"] for n in wf["nodes"]]
    assert len(ids) == len(set(ids)), "duplicate node ids"
    assert wf["last_node_id"] >= max(ids)
    assert wf["last_link_id"] >= max((link[0] for link in wf["links"]), default=0)
    for node in wf["nodes"]:
        where = f"{fname} node {node['id']} ({node['type']})"
        if node["type"] in FRONTEND_ONLY:
            continue
        assert node["type"] in nodes, f"{where}: neither a node of this pack nor a known core node"
        cls, spec = nodes[node["type"]]
        named = widget_values_by_name(spec, node.get("widgets_values") or [])
        specs = {name: (kind, options, opts) for name, kind, options, opts in input_specs(spec)}
        for name, value in named.items():
            kind, options, opts = specs[name]
            if kind == "COMBO":
                if (node["type"], name) in FILE_DROPDOWNS_WITH_BUILTINS and value not in options:
                    assert isinstance(value, str) and value.endswith(MODEL_SUFFIXES) and "/.." not in "/" + value, \
                        f"{where}: {name}={value!r} is neither a built-in entry {options} nor a model file name"
                elif options:
                    assert value in options, f"{where}: {name}={value!r} not in {options}"
                elif opts.get("image_upload"):  # LoadImage: a file in ComfyUI's input/ folder
                    assert isinstance(value, str) and value.lower().endswith(IMAGE_SUFFIXES) and \
                        "/.." not in "/" + value, f"{where}: {name}={value!r} is not an image file name"
                else:  # a model-file dropdown (empty here): a plausible file name
                    assert isinstance(value, str) and value.endswith(MODEL_SUFFIXES) and "/.." not in "/" + value, \
                        f"{where}: {name}={value!r} is not a model file name"
            elif kind == "INT":
                assert isinstance(value, int) and not isinstance(value, bool), f"{where}: {name} not an int"
            elif kind == "FLOAT":
                assert isinstance(value, (int, float)) and not isinstance(value, bool), f"{where}: {name} not a number"
            elif kind == "STRING":
                assert isinstance(value, str), f"{where}: {name} not a string"
            elif kind == "BOOLEAN":
                assert isinstance(value, bool), f"{where}: {name} not a bool"
            if kind in ("INT", "FLOAT"):
                assert opts.get("min", value) <= value <= opts.get("max", value), f"{where}: {name} out of range"
        # the input slots in the order the frontend creates them: socket-only inputs, then one socket per
        # widget (required, then optional), then LoadImage's upload button. Links address inputs by index.
        order = [name for name, kind, _, _ in input_specs(spec) if kind not in WIDGET_TYPES]
        order += [name for name, kind, _, _ in input_specs(spec) if kind in WIDGET_TYPES]
        order += ["upload"] * any(opts.get("image_upload") for *_, opts in input_specs(spec))
        assert [s["name"] for s in node.get("inputs", [])] == order, f"{where}: input slots differ from {order}"
        # every socket-only required input is present and connected
        sockets = {s["name"]: s for s in node.get("inputs", [])}
        for name, (kind, _, _) in specs.items():
            if kind not in WIDGET_TYPES and name in spec["required"]:
                assert sockets.get(name, {}).get("link") is not None, f"{where}: required input {name!r} not connected"
        assert [o["type"] for o in node.get("outputs", [])] == list(cls.RETURN_TYPES), f"{where}: outputs differ"


def accepts(input_type: str, output_type: str) -> bool:
    """LiteGraph.isValidConnection: "*", or the comma-separated type sets overlap (a union output such as
    "WANFLOW_MODEL,MODEL" links into either kind of input, as ComfyUI's validate_node_input allows)."""
    return input_type == "*" or bool(set(output_type.split(",")) & set(input_type.split(",")))


def check_links(wf, nodes, fname):
    by_id = {n["id"]: n for n in wf["nodes"]}
    link_ids = [link[0] for link in wf["links"]]
    assert len(link_ids) == len(set(link_ids)), "duplicate link ids"
    for link_id, origin, o_slot, target, t_slot, typ in wf["links"]:
        where = f"{fname} link {link_id}"
        assert origin in by_id and target in by_id, f"{where}: unknown node"
        out = by_id[origin]["outputs"][o_slot]
        inp = by_id[target]["inputs"][t_slot]
        assert link_id in (out.get("links") or []), f"{where}: not listed on its origin output"
        assert inp.get("link") == link_id, f"{where}: target input does not point back"
        # the frontend stores the input's type on the link (input.type || output.type); an input may
        # accept several types ("WANFLOW_MODEL,MODEL"), the output's type must be one of them
        assert inp["type"] == typ, f"{where}: link type {typ} vs target input type {inp['type']}"
        assert accepts(typ, out["type"]), f"{where}: {out['type']} output into a {typ} input"
        ocls, _ = nodes[by_id[origin]["type"]]
        assert ocls.RETURN_TYPES[o_slot] == out["type"], f"{where}: origin returns {ocls.RETURN_TYPES[o_slot]}"
        tspec = {name: kind for name, kind, _, _ in input_specs(nodes[by_id[target]["type"]][1])}
        assert tspec.get(inp["name"]) == typ, f"{where}: target input {inp['name']!r} takes {tspec.get(inp['name'])}"
    # the reverse direction: every link id on a socket is a real link
    for node in wf["nodes"]:
        for inp in node.get("inputs", []):
            assert inp.get("link") is None or inp["link"] in link_ids, f"node {node['id']}: dangling input link"
        for out in node.get("outputs", []):
            assert all(lid in link_ids for lid in out.get("links") or []), f"node {node['id']}: dangling output link"


@pytest.mark.parametrize("path", UI_FILES, ids=lambda p: p.name)
def test_api_twin_is_the_converted_ui_graph(path, nodes):
    twin = ui_to_api_name(path)
    assert twin.exists(), f"{path.name} has no API-format twin at workflows/api/{path.name}"
    api = json.loads(twin.read_text())
    stripped = {nid: {"class_type": n["class_type"], "inputs": n["inputs"]} for nid, n in api.items()}
    assert stripped == ui_to_api(json.loads(path.read_text()), nodes)


def node_rect(node: dict) -> tuple:
    """(x, y, width, height) a node covers on the canvas: title bar and body, or the title bar only when
    collapsed (the frontend draws a collapsed node at most as wide as its size)."""
    x, y = node["pos"]
    width, height = node["size"]
    if (node.get("flags") or {}).get("collapsed"):
        height = 0
    return x, y - NODE_TITLE_HEIGHT, width, height + NODE_TITLE_HEIGHT


def inside(inner, outer) -> bool:
    return outer[0] <= inner[0] and outer[1] <= inner[1] and \
        inner[0] + inner[2] <= outer[0] + outer[2] and inner[1] + inner[3] <= outer[1] + outer[3]


def overlap(a, b) -> bool:
    return a[0] < b[0] + b[2] and b[0] < a[0] + a[2] and a[1] < b[1] + b[3] and b[1] < a[1] + a[3]


def group_body(group: dict) -> tuple:
    """A group's bounding box below its title bar: where its nodes belong."""
    x, y, w, h = group["bounding"]
    title = group["font_size"] * 1.4
    return x, y + title, w, h - title


def check_groups(wf, nodes, fname):
    """Every node the server runs lies in exactly one group, inside its frame below the title bar; notes
    lie outside every group; frames do not overlap; titles are the catalogue's vocabulary, once each."""
    groups = wf.get("groups") or []
    assert groups, f"{fname}: no groups"
    titles = [g["title"] for g in groups]
    assert len(titles) == len(set(titles)) and set(titles) <= set(GROUP_COLOURS), f"{fname}: group titles {titles}"
    assert {"models", "outputs"} <= set(titles), f"{fname}: groups {titles} lack models / outputs"
    for g in groups:
        assert set(g) == GROUP_KEYS and g["font_size"] == 24 and g["flags"] == {}, f"{fname}: group {g}"
        x, y, w, h = g["bounding"]
        assert all(isinstance(v, int) for v in g["bounding"]) and w > 0 and h > 0, f"{fname}: {g['title']} bounding"
    for i, a in enumerate(groups):
        for b in groups[i + 1:]:
            assert not overlap(a["bounding"], b["bounding"]), f"{fname}: groups {a['title']!r} and {b['title']!r} overlap"
    for node in wf["nodes"]:
        rect = node_rect(node)
        where = f"{fname} node {node['id']} ({node.get('title') or node['type']})"
        if node["type"] in FRONTEND_ONLY:
            assert not any(overlap(rect, g["bounding"]) for g in groups), f"{where}: a note inside a group"
            continue
        holders = [g["title"] for g in groups if inside(rect, group_body(g))]
        assert len(holders) == 1, f"{where}: {rect} lies inside {holders or 'no group'}"


def check_settings_wiring(wf, nodes, fname):
    """Each settings node is collapsed and feeds the `settings` input of trainers of its kind; each
    trainer gets its settings from one; both sit in the same group."""
    by_id = {n["id"]: n for n in wf["nodes"]}
    links = {link[0]: link for link in wf["links"]}
    for node in wf["nodes"]:
        where = f"{fname} node {node['id']} ({node['type']})"
        if node["type"] in SETTINGS_NODES:
            assert (node.get("flags") or {}).get("collapsed") is True, f"{where}: settings node not collapsed"
            targets = [links[lid] for out in node["outputs"] for lid in out.get("links") or []]
            assert targets, f"{where}: its settings go nowhere"
            for _, _, _, target, t_slot, _ in targets:
                trainer = by_id[target]
                assert trainer["type"] in SETTINGS_NODES[node["type"]], f"{where}: wired to a {trainer['type']}"
                assert trainer["inputs"][t_slot]["name"] == "settings", f"{where}: wired to another input"
                assert same_group(wf, node, trainer), f"{where}: not in its trainer's group"
        if node["type"] in TRAINERS:
            slot = next(s for s in node["inputs"] if s["name"] == "settings")
            assert slot["link"] is not None, f"{where}: no settings node on its settings input"
            origin = by_id[links[slot["link"]][1]]
            assert origin["type"] == TRAINERS[node["type"]], f"{where}: settings from a {origin['type']}"


def same_group(wf, a, b) -> bool:
    holder = [[g["title"] for g in wf.get("groups") or [] if inside(node_rect(n), group_body(g))] for n in (a, b)]
    return holder[0] == holder[1] and len(holder[0]) == 1


def check_no_deprecated(wf, nodes, fname):
    for node in wf["nodes"]:
        if node["type"] in FRONTEND_ONLY:
            continue
        assert not getattr(nodes[node["type"]][0], "DEPRECATED", False), \
            f"{fname} node {node['id']}: {node['type']} is deprecated"


@pytest.mark.parametrize("path", UI_FILES, ids=lambda p: p.name)
def test_no_deprecated_nodes(path, nodes):
    check_no_deprecated(json.loads(path.read_text()), nodes, path.name)
    api = json.loads(ui_to_api_name(path).read_text())
    used = {n["class_type"] for n in api.values()}
    assert not [t for t in used if getattr(nodes[t][0], "DEPRECATED", False)], f"{path.name}: API twin uses {used}"


def test_deprecated_nodes_exist(nodes):
    """The check above has something to catch: the old all-widgets trainers are registered, deprecated."""
    for name in ("WanFlowTrainLoRA", "WanFlowTrainFull", "WanFlowSRPOTrain"):
        assert getattr(nodes[name][0], "DEPRECATED", False) is True, name


@pytest.mark.parametrize("path", UI_FILES, ids=lambda p: p.name)
def test_groups_enclose_their_nodes(path, nodes):
    check_groups(json.loads(path.read_text()), nodes, path.name)


@pytest.mark.parametrize("path", UI_FILES, ids=lambda p: p.name)
def test_settings_nodes_are_collapsed_and_wired(path, nodes):
    check_settings_wiring(json.loads(path.read_text()), nodes, path.name)


def test_training_workflows_use_the_new_trainers():
    """The workflows that train have a current trainer with a settings node (the catalogue's graphs)."""
    trainers = {}
    for make in catalogue.WORKFLOWS:
        g = make()
        types = [n["type"] for n in g.nodes]
        trainers[g.name] = sorted(t for t in types if t in TRAINERS)
        for t in trainers[g.name]:
            assert types.count(TRAINERS[t]) >= 1, f"{g.name}: {t} without its settings node"
    assert trainers["wanflow_train_lora_wan21_1.3b"] == ["WanFlowLoRATraining"]
    assert trainers["wanflow_demo_train"] == ["WanFlowFullTraining"]
    assert trainers["wanflow_srpo_demo"] == trainers["wanflow_srpo_wan22_a14b_low_noise"] == ["WanFlowSRPOTraining"]


def test_groups_hold_the_nodes_the_catalogue_assigns(nodes):
    """Each node lies in the frame of the group the catalogue puts it in (by node id in the built file)."""
    defs = node_defs(import_pack())
    for make in catalogue.WORKFLOWS:
        g = make()
        ui, _ = build(g, defs)
        frames = {grp["title"]: grp for grp in ui["groups"]}
        assert list(frames) == list(g.groups), g.name
        by_id = {n["id"]: n for n in ui["nodes"]}
        for key, nid in node_ids(g).items():
            spec = next(n for n in g.nodes if n["key"] == key)
            rect = node_rect(by_id[nid])
            if spec["group"] is None:
                assert not any(overlap(rect, f["bounding"]) for f in frames.values()), f"{g.name}/{key}"
            else:
                assert inside(rect, group_body(frames[spec["group"]])), f"{g.name}/{key} outside {spec['group']!r}"
        # the pipeline's order: models leftmost, outputs rightmost
        xs = {t: f["bounding"][0] for t, f in frames.items()}
        assert xs["models"] == min(xs.values()) and xs["outputs"] == max(xs.values()), (g.name, xs)


@pytest.mark.parametrize("path", UI_FILES, ids=lambda p: p.name)
def test_collapse_and_groups_do_not_change_the_api(path, nodes):
    """Collapsed flags and groups are drawing only: the converted prompt is the same without them."""
    wf = json.loads(path.read_text())
    plain = json.loads(json.dumps(wf))
    plain["groups"] = []
    for node in plain["nodes"]:
        node["flags"] = {}
    assert ui_to_api(plain, nodes) == ui_to_api(wf, nodes)


def test_every_api_twin_has_a_ui_original():
    orphans = [p.name for p in sorted((WORKFLOWS / "api").glob("*.json")) if not (WORKFLOWS / p.name).exists()]
    assert orphans == []


def test_generated_workflows_are_up_to_date(nodes):
    """The workflows that scripts/make_workflows.py generates are committed as it writes them."""
    spec = importlib.util.spec_from_file_location("make_workflows", PACK_DIR / "scripts" / "make_workflows.py")
    make = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make)
    files = make.outputs(import_pack())
    assert len(files) == 2 * len(catalogue.WORKFLOWS) and all(p.parent in (WORKFLOWS, WORKFLOWS / "api") for p in files)
    stale = [str(p.relative_to(PACK_DIR)) for p, text in files.items()
             if not p.exists() or p.read_text(encoding="utf-8") != text]
    assert stale == [], f"run .venv/bin/python scripts/make_workflows.py: {stale} differ from its output"


def test_checker_catches_mistakes(nodes):
    """The checks above can fail: each broken copy of a shipped workflow is rejected."""
    spec = nodes["WanFlowLoadDiffusionModel"][1]
    with pytest.raises(AssertionError, match="widgets_values"):
        widget_values_by_name(spec, ["wan2.1_t2v_1.3B_fp16.safetensors", "default"])
    with pytest.raises(AssertionError, match="widgets_values has 4"):
        widget_values_by_name(spec, ["a.safetensors", "default", "auto", "extra"])
    with pytest.raises(AssertionError, match="upload"):
        widget_values_by_name(nodes["LoadImage"][1], ["example.png"])
    with pytest.raises(AssertionError, match="control_after_generate"):
        widget_values_by_name(nodes["WanFlowSampler"][1], [42, 30, "unipc", 8.0, 6.0, 1.0, 0.0, 0.0])
    assert accepts("WANFLOW_MODEL,MODEL", "MODEL") and not accepts("WANFLOW_MODEL,MODEL", "IMAGE")
    original = json.loads(next(p for p in UI_FILES if p.stem == "wanflow_t2v_wan21_1.3b").read_text())

    def broken(edit):
        wf = json.loads(json.dumps(original))
        edit(wf)
        return wf

    loader = next(i for i, n in enumerate(original["nodes"]) if n["type"] == "WanFlowLoadDiffusionModel")
    bad_graphs = {
        "unknown type": (check_nodes, lambda wf: wf["nodes"][loader].update(type="WanFlowNoSuchNode")),
        "combo value": (check_nodes, lambda wf: wf["nodes"][loader]["widgets_values"].__setitem__(1, "fp64")),
        "model file": (check_nodes, lambda wf: wf["nodes"][loader]["widgets_values"].__setitem__(0, "model.txt")),
        "link type": (check_links, lambda wf: wf["links"][0].__setitem__(5, "MODEL")),
        "link slot": (check_links, lambda wf: wf["links"][0].__setitem__(4, 5)),
        "dangling": (check_links, lambda wf: wf["links"].clear()),
        "input order": (check_nodes, lambda wf: wf["nodes"][loader]["inputs"].reverse()),
    }
    image = next((i for i, n in enumerate(original["nodes"]) if n["type"] == "LoadImage"), None)
    if image is not None:
        bad_graphs["image file"] = (check_nodes,
                                    lambda wf: wf["nodes"][image]["widgets_values"].__setitem__(0, "a.txt"))
        bad_graphs["upload value"] = (check_nodes, lambda wf: wf["nodes"][image]["widgets_values"].pop())
    for what, (check, edit) in bad_graphs.items():
        with pytest.raises((AssertionError, IndexError, KeyError)):
            check(broken(edit), nodes, what)
            pytest.fail(f"{what}: broken workflow accepted")  # pragma: no cover

    # layout and trainer checks: a node moved out of its group, overlapping groups, a note inside a group,
    # an expanded or unwired settings node, a deprecated trainer
    sampler = next(i for i, n in enumerate(original["nodes"]) if n["type"] == "WanFlowSampler")
    note = next(i for i, n in enumerate(original["nodes"]) if n["type"] == "MarkdownNote")
    models = next(i for i, g in enumerate(original["groups"]) if g["title"] == "models")
    layout_mistakes = {
        "node outside": lambda wf: wf["nodes"][sampler]["pos"].__setitem__(1, -500),
        "node across the title bar": lambda wf: wf["nodes"][sampler]["pos"].__setitem__(
            1, next(g for g in wf["groups"] if g["title"] == "generation")["bounding"][1] + 10 + NODE_TITLE_HEIGHT),
        "group overlap": lambda wf: wf["groups"][models]["bounding"].__setitem__(2, 5000),
        "note in a group": lambda wf: wf["nodes"][note].update(pos=list(wf["nodes"][loader]["pos"])),
        "no groups": lambda wf: wf.update(groups=[]),
        "unknown title": lambda wf: wf["groups"][models].update(title="Models"),
    }
    for what, edit in layout_mistakes.items():
        with pytest.raises(AssertionError):
            check_groups(broken(edit), nodes, what)
            pytest.fail(f"{what}: broken layout accepted")  # pragma: no cover
    training = json.loads(next(p for p in UI_FILES if p.stem == "wanflow_train_lora_wan21_1.3b").read_text())
    check_settings_wiring(training, nodes, "training")
    settings = next(i for i, n in enumerate(training["nodes"]) if n["type"] == "WanFlowTrainingSettings")
    trainer_ = next(i for i, n in enumerate(training["nodes"]) if n["type"] == "WanFlowLoRATraining")

    def unwire(wf):
        link = next(s["link"] for s in wf["nodes"][trainer_]["inputs"] if s["name"] == "settings")
        next(s for s in wf["nodes"][trainer_]["inputs"] if s["name"] == "settings")["link"] = None
        wf["nodes"][settings]["outputs"][0]["links"].remove(link)
        wf["links"] = [lk for lk in wf["links"] if lk[0] != link]

    wiring_mistakes = {
        "expanded": (check_settings_wiring, lambda wf: wf["nodes"][settings].update(flags={})),
        "unwired": (check_settings_wiring, unwire),
        "deprecated": (check_no_deprecated, lambda wf: wf["nodes"][trainer_].update(type="WanFlowTrainLoRA")),
    }
    for what, (check, edit) in wiring_mistakes.items():
        wf = json.loads(json.dumps(training))
        edit(wf)
        with pytest.raises(AssertionError):
            check(wf, nodes, what)
            pytest.fail(f"{what}: broken training workflow accepted")  # pragma: no cover

    # the reward dropdown takes its built-in entry or a model file name, nothing else
    srpo = json.loads(next(p for p in UI_FILES if p.stem == "wanflow_srpo_wan22_a14b_low_noise").read_text())
    reward = next(i for i, n in enumerate(srpo["nodes"]) if n["type"] == "WanFlowLoadRewardModel")
    for bad in ("HPS_v2.1_compressed.txt", "../HPS_v2.1_compressed.pt"):
        wf = json.loads(json.dumps(srpo))
        wf["nodes"][reward]["widgets_values"][0] = bad
        with pytest.raises(AssertionError, match="neither a built-in entry"):
            check_nodes(wf, nodes, bad)
    srpo["nodes"][reward]["widgets_values"][0] = "colour (demo, no file)"
    check_nodes(srpo, nodes, "built-in entry")
