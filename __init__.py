"""wan-flow: ComfyUI nodes for the Wan 2.1 / 2.2 video models.

ComfyUI imports this file by its folder path, as a package; everything inside the pack is imported
relatively.
"""
if __package__:
    from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS
else:
    # Imported as a lone module (pytest collecting a checkout whose folder name is not a valid
    # package name, e.g. "wan-flow"): there is no package to import the nodes relative to.
    NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS = {}, {}

WEB_DIRECTORY = "./js"  # frontend extension: shows the text nodes return (Model Info)

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "WEB_DIRECTORY"]
