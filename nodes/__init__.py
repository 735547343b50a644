"""ComfyUI nodes of wan-flow: thin adapters over wan_core (no math here)."""
from .loaders import WanFlowLoadDiffusionModel, WanFlowModelInfo

NODE_CLASS_MAPPINGS = {
    "WanFlowLoadDiffusionModel": WanFlowLoadDiffusionModel,
    "WanFlowModelInfo": WanFlowModelInfo,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "WanFlowLoadDiffusionModel": "WanFlow Load Diffusion Model",
    "WanFlowModelInfo": "WanFlow Model Info",
}
