"""ComfyUI nodes of wan-flow: thin adapters over wan_core (no math here).

Each node module exports its own NODE_CLASS_MAPPINGS and NODE_DISPLAY_NAME_MAPPINGS; the pack's are
their union, in the order of MODULES (node ids and display names are what saved graphs refer to).
"""
import importlib

MODULES = ("loaders", "text", "video_vae", "sampling", "image_to_video", "save_video", "lora", "dataset",
           "training", "demo", "reward", "srpo")

NODE_CLASS_MAPPINGS = {}
NODE_DISPLAY_NAME_MAPPINGS = {}
for _name in MODULES:
    _module = importlib.import_module(f".{_name}", __name__)
    _clash = sorted(NODE_CLASS_MAPPINGS.keys() & _module.NODE_CLASS_MAPPINGS.keys())
    if _clash:
        raise RuntimeError(f"nodes.{_name} defines node ids that an earlier module defines: {_clash}")
    NODE_CLASS_MAPPINGS.update(_module.NODE_CLASS_MAPPINGS)
    NODE_DISPLAY_NAME_MAPPINGS.update(_module.NODE_DISPLAY_NAME_MAPPINGS)
del _name, _module, _clash
