"""wan-flow: ComfyUI nodes for the Wan 2.1 / 2.2 video models.

ComfyUI imports this file by its folder path; everything inside the pack is imported relatively.
"""
from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
