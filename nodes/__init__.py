"""ComfyUI nodes of wan-flow: thin adapters over wan_core (no math here)."""
from .loaders import (WanFlowLoadCLIPVision, WanFlowLoadDiffusionModel, WanFlowLoadTextEncoder, WanFlowLoadVAE,
                      WanFlowModelInfo)
from .image_to_video import WanFlowImageToVideo
from .sampling import WanFlowEmptyLatent, WanFlowSampler
from .save_video import WanFlowSaveVideo
from .text import WanFlowTextEncode
from .video_vae import WanFlowVAEDecode, WanFlowVAEEncode

NODE_CLASS_MAPPINGS = {
    "WanFlowLoadDiffusionModel": WanFlowLoadDiffusionModel,
    "WanFlowLoadVAE": WanFlowLoadVAE,
    "WanFlowLoadTextEncoder": WanFlowLoadTextEncoder,
    "WanFlowLoadCLIPVision": WanFlowLoadCLIPVision,
    "WanFlowModelInfo": WanFlowModelInfo,
    "WanFlowTextEncode": WanFlowTextEncode,
    "WanFlowVAEEncode": WanFlowVAEEncode,
    "WanFlowVAEDecode": WanFlowVAEDecode,
    "WanFlowEmptyLatent": WanFlowEmptyLatent,
    "WanFlowImageToVideo": WanFlowImageToVideo,
    "WanFlowSampler": WanFlowSampler,
    "WanFlowSaveVideo": WanFlowSaveVideo,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "WanFlowLoadDiffusionModel": "WanFlow Load Diffusion Model",
    "WanFlowLoadVAE": "WanFlow Load VAE",
    "WanFlowLoadTextEncoder": "WanFlow Load Text Encoder",
    "WanFlowLoadCLIPVision": "WanFlow Load CLIP Vision",
    "WanFlowModelInfo": "WanFlow Model Info",
    "WanFlowTextEncode": "WanFlow Text Encode",
    "WanFlowVAEEncode": "WanFlow VAE Encode",
    "WanFlowVAEDecode": "WanFlow VAE Decode",
    "WanFlowEmptyLatent": "WanFlow Empty Latent",
    "WanFlowImageToVideo": "WanFlow Image To Video",
    "WanFlowSampler": "WanFlow Sampler",
    "WanFlowSaveVideo": "WanFlow Save Video",
}
