"""The `wanflow.*` metadata keys of the safetensors files the pack writes (LoRAs, fine-tuned models):
one name each. Values are strings (JSON for non-strings, see `adapters.save_lora`). The key strings
are part of the file format: files already written carry them, so they never change.
"""
FORMAT_VERSION = "wanflow.format_version"  # the LoRA file layout: LORA_FORMAT
BASE_MODEL = "wanflow.base_model"          # the file (or "ComfyUI MODEL") training started from
VARIANT = "wanflow.variant"                # WanConfig.variant of that model; Load LoRA warns on a mismatch
STEPS = "wanflow.steps"                    # optimizer steps done
RANK = "wanflow.rank"                      # LoRA rank and alpha
ALPHA = "wanflow.alpha"
TARGETS = "wanflow.targets"                # LoRA target preset
SIGMA_RANGE = "wanflow.sigma_range"        # "lo,hi": the noise levels trained (Wan2.2 A14B experts)
EXPERT = "wanflow.expert"                  # "high_noise", "low_noise" or "single"
TRAIN_CONFIG = "wanflow.train_config"      # the whole TrainConfig as JSON (command line)
SRPO_BEST_STEP = "wanflow.srpo.best_step"  # SRPO: the step whose weights were kept
SRPO_SUMMARY = "wanflow.srpo.summary"      # SRPO: the run's summary text

LORA_FORMAT = "1"  # the value of FORMAT_VERSION in the LoRA files written now
