"""Text encoding node: prompts -> ComfyUI CONDITIONING with Wan's UMT5 features."""
from __future__ import annotations

from ..wan_core.generation.defaults import NEGATIVE_BY_VARIANT, default_negative_prompt
from ..wan_core.models.text_encoder import pad_context
from .comfy_bridge import intermediate_device


class WanFlowTextEncode:
    """Encode the positive and negative prompt with UMT5, as the official pipeline does."""

    DESCRIPTION = (
        "Encodes the positive and negative prompts with Wan's UMT5 encoder, cleaning the text and trimming to the "
        "real token count as the official code does; rows past the prompt are zeros up to 512 tokens. An empty "
        "negative prompt uses the official default negative prompt of the chosen Wan release."
    )
    CATEGORY = "WanFlow/conditioning"
    FUNCTION = "encode"
    RETURN_TYPES = ("CONDITIONING", "CONDITIONING")
    RETURN_NAMES = ("positive", "negative")
    OUTPUT_TOOLTIPS = ("The positive prompt's conditioning [1, 512, 4096].",
                       "The negative prompt's conditioning (the official default when left empty).")

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "text_encoder": ("WANFLOW_TEXT_ENCODER", {"tooltip": "From WanFlow Load Text Encoder."}),
                "positive": ("STRING", {"multiline": True, "dynamicPrompts": True, "default": "",
                                        "tooltip": "What the video should show."}),
                "negative": ("STRING", {"multiline": True, "dynamicPrompts": True, "default": "",
                                        "tooltip": "What to avoid. Empty: the official default negative prompt of the variant."}),
                "variant": (list(NEGATIVE_BY_VARIANT), {
                    "default": next(iter(NEGATIVE_BY_VARIANT)),
                    "tooltip": "The Wan release this is for; picks the official default negative prompt.",
                }),
            }
        }

    def encode(self, text_encoder, positive, negative, variant):
        encoder = text_encoder.load()
        negative = negative if negative.strip() else default_negative_prompt(variant)
        features = encoder.encode([positive, negative])
        padded = pad_context(features).float().to(intermediate_device())
        out = [[[padded[i:i + 1], {"wanflow_tokens": int(features[i].shape[0])}]] for i in range(2)]
        return tuple(out)


NODE_CLASS_MAPPINGS = {"WanFlowTextEncode": WanFlowTextEncode}
NODE_DISPLAY_NAME_MAPPINGS = {"WanFlowTextEncode": "WanFlow Text Encode"}
