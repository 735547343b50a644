"""ComfyUI nodes of wan-flow: thin adapters over wan_core (no math here)."""
from .dataset import WanFlowCacheLatents, WanFlowVideoDataset
from .demo import WanFlowDemoDataset, WanFlowDemoModels
from .image_to_video import WanFlowImageToVideo
from .loaders import (
                      WanFlowLoadCLIPVision,
                      WanFlowLoadDiffusionModel,
                      WanFlowLoadTextEncoder,
                      WanFlowLoadVAE,
                      WanFlowModelInfo,
)
from .lora import WanFlowLoadLoRA
from .reward import WanFlowLoadRewardModel
from .sampling import WanFlowEmptyLatent, WanFlowSampler
from .save_video import WanFlowSaveVideo
from .srpo import WanFlowSRPOTrain
from .text import WanFlowTextEncode
from .training import WanFlowTrainFull, WanFlowTrainLoRA
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
    "WanFlowLoadLoRA": WanFlowLoadLoRA,
    "WanFlowVideoDataset": WanFlowVideoDataset,
    "WanFlowCacheLatents": WanFlowCacheLatents,
    "WanFlowTrainLoRA": WanFlowTrainLoRA,
    "WanFlowTrainFull": WanFlowTrainFull,
    "WanFlowDemoModels": WanFlowDemoModels,
    "WanFlowDemoDataset": WanFlowDemoDataset,
    "WanFlowLoadRewardModel": WanFlowLoadRewardModel,
    "WanFlowSRPOTrain": WanFlowSRPOTrain,
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
    "WanFlowLoadLoRA": "WanFlow Load LoRA",
    "WanFlowVideoDataset": "WanFlow Video Dataset",
    "WanFlowCacheLatents": "WanFlow Cache Latents",
    "WanFlowTrainLoRA": "WanFlow Train LoRA",
    "WanFlowTrainFull": "WanFlow Train Full",
    "WanFlowDemoModels": "WanFlow Demo Models",
    "WanFlowDemoDataset": "WanFlow Demo Dataset",
    "WanFlowLoadRewardModel": "WanFlow Load Reward Model",
    "WanFlowSRPOTrain": "WanFlow SRPO Train",
}
