"""LoRA: trainable adapters written in ComfyUI's native keys (`adapters`), the key formats of every
trainer users have files from (`keys`), and merging a file into a model with a report (`merge`)."""
from .adapters import LORA_TARGET_PRESETS, LoRANetwork, add_lora, read_lora_metadata, save_lora
from .keys import parse_lora
from .merge import LoraReport, apply_lora, check_lora

__all__ = ["add_lora", "save_lora", "read_lora_metadata", "LoRANetwork", "LORA_TARGET_PRESETS", "parse_lora",
           "apply_lora", "check_lora", "LoraReport"]
