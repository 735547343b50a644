"""Demo nodes: the embedded demo as a ComfyUI workflow with no downloaded weights.

WanFlow Demo Models gives a freshly initialised tiny Wan DiT, the stand-in VAE (a fixed linear codec
with the Wan2.1 latent geometry) and the stand-in word encoder; WanFlow Demo Dataset renders the
procedural training clips (coloured squares moving in known directions) and encodes them with those
two. Train the DiT on the dataset with WanFlow Train Full, then sample a held-out prompt with the
pack's usual Text Encode -> Empty Latent -> Sampler -> VAE Decode chain.
"""
from __future__ import annotations

from ..wan_core.demo.codec import DemoCodec
from ..wan_core.demo.data import TRAIN, held_out_prompts, make_dataset
from ..wan_core.demo.run import DEMO_MODEL, demo_model
from ..wan_core.demo.text import DemoTextEncoder
from .comfy_bridge import ModelHandle


class WanFlowDemoModels:
    """A random-weight demo DiT with its stand-in VAE and text encoder."""

    DESCRIPTION = (
        "The embedded demo's models, no downloads: a tiny Wan2.1 T2V DiT with fresh random weights (train it with "
        "WanFlow Train Full on WanFlow Demo Dataset), a fixed parameter-free codec with the Wan2.1 VAE geometry "
        "(16 channels, 8x spatial, 4x temporal) and a word-embedding text encoder. They plug into every WanFlow "
        "node: Text Encode, Empty Latent, Sampler (use cfg 1), VAE Encode / Decode. Frames: 64x64, 17 frames."
    )
    CATEGORY = "WanFlow/demo"
    FUNCTION = "make"
    RETURN_TYPES = ("WANFLOW_MODEL", "WANFLOW_VAE", "WANFLOW_TEXT_ENCODER")
    RETURN_NAMES = ("model", "vae", "text_encoder")
    OUTPUT_TOOLTIPS = ("A randomly initialised demo Wan DiT (untrained).",
                       "The demo codec (stand-in for the Wan2.1 VAE).",
                       "The demo word encoder (stand-in for UMT5).")

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "seed": ("INT", {"default": 0, "min": 0, "max": 0xFFFFFFFFFFFFFFFF, "control_after_generate": True,
                                 "tooltip": "Seed of the DiT's random initial weights."}),
            }
        }

    def make(self, seed):
        model = demo_model(seed)
        return (ModelHandle(model, name=f"wanflow-demo (random init, seed {seed})", role="diffusion"),
                ModelHandle(DemoCodec(), name="wanflow-demo codec", role="vae"),
                ModelHandle(DemoTextEncoder(DEMO_MODEL["text_dim"]), name="wanflow-demo words", role="text_encoder",
                            on_cpu=True))


class WanFlowDemoDataset:
    """The demo's procedural training clips, encoded with the demo codec and word encoder."""

    DESCRIPTION = (
        "Renders the demo's training clips - a coloured square (red, green, blue, yellow, white) moving left, right, "
        "up or down on grey, captioned 'a red square moving left' - for every colour x direction combination except "
        "the held-out ones, and encodes them with the demo codec and word encoder. Feed it to WanFlow Train Full; "
        "the held_out_prompts output lists the combinations never seen in training, to sample afterwards."
    )
    CATEGORY = "WanFlow/demo"
    FUNCTION = "make"
    RETURN_TYPES = ("WANFLOW_LATENTS", "STRING")
    RETURN_NAMES = ("latents", "held_out_prompts")
    OUTPUT_TOOLTIPS = ("Training latents and captions for WanFlow Train Full.",
                       "The held-out prompts, one per line (never in the training set).")

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "vae": ("WANFLOW_VAE", {"tooltip": "The demo codec from WanFlow Demo Models."}),
                "text_encoder": ("WANFLOW_TEXT_ENCODER", {"tooltip": "The demo word encoder from WanFlow Demo Models."}),
                "clips_per_combo": ("INT", {"default": 100, "min": 1, "max": 10_000,
                                            "tooltip": f"Random clips per training combination ({len(TRAIN)} combinations)."}),
                "seed": ("INT", {"default": 0, "min": 0, "max": 0xFFFFFFFFFFFFFFFF, "control_after_generate": True,
                                 "tooltip": "Seed of the clips' random sizes, speeds and start positions."}),
            }
        }

    def make(self, vae, text_encoder, clips_per_combo, seed):
        codec = getattr(vae, "module", None)
        words = getattr(text_encoder, "module", None)
        if not isinstance(codec, DemoCodec) or not isinstance(words, DemoTextEncoder):
            raise ValueError("WanFlow Demo Dataset works with the demo codec and word encoder of WanFlow Demo Models; "
                             f"found vae={vae!r}, text_encoder={text_encoder!r}")
        dataset = make_dataset(vae.load(), text_encoder.load(), clips_per_combo=clips_per_combo, seed=seed)
        return (dataset, "\n".join(held_out_prompts()))


NODE_CLASS_MAPPINGS = {"WanFlowDemoModels": WanFlowDemoModels, "WanFlowDemoDataset": WanFlowDemoDataset}
NODE_DISPLAY_NAME_MAPPINGS = {"WanFlowDemoModels": "WanFlow Demo Models", "WanFlowDemoDataset": "WanFlow Demo Dataset"}
