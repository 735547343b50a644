"""Training: flow-matching LoRA / full fine-tuning (`flow_matching`), media datasets (`dataset`) and
their latent cache (`latent_cache`), multi-process FSDP (`distributed`), loss plots (`plots`) and the
`python -m wan_core train` command (`cli`)."""
from .flow_matching import TrainConfig, TrainResult, train

__all__ = ["TrainConfig", "TrainResult", "train"]
