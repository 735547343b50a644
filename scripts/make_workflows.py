#!/usr/bin/env python
"""Generate the pack's generation workflows: a UI-format file (workflows/<name>.json, what ComfyUI's
Templates dialog lists) and its API-format twin (workflows/api/<name>.json) from one compact graph
description each, so the two can never drift apart.

    .venv/bin/python scripts/make_workflows.py           # (re)write the files
    .venv/bin/python scripts/make_workflows.py --check   # exit 1 if a file is missing or out of date

Input sockets, widget order and the UI-only widget values (control_after_generate after a seed, the
upload button of LoadImage) follow the node definitions: the pack's own INPUT_TYPES (imported here)
and, for the ComfyUI core nodes used, CORE_NODES below (ComfyUI 0.3.64, frontend 1.27.10, comfyui.md
§11). tests/test_workflows.py checks every output against the nodes and the UI->API conversion.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import tempfile
import tomllib
import uuid
from pathlib import Path

PACK_DIR = Path(__file__).resolve().parents[1]
WORKFLOWS = PACK_DIR / "workflows"
with open(PACK_DIR / "pyproject.toml", "rb") as _f:
    _project = tomllib.load(_f)["project"]
PACK_ID, PACK_VER = _project["name"], _project["version"]  # cnr_id / ver of the pack's nodes
CORE_VER = "0.3.64"
FRONTEND_VERSION = "1.27.10"
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
MODEL_SUFFIXES = (".safetensors", ".sft", ".pth", ".pt", ".ckpt", ".bin")
OPTIONAL_SHAPE = 7  # RenderShape.HollowCircle: how the frontend draws (and saves) optional inputs

# ComfyUI core nodes the workflows use: (INPUT_TYPES as /object_info shows them, RETURN_TYPES, output names, title).
CORE_NODES = {
    "LoadImage": ({"required": {"image": ([], {"image_upload": True})}},  # options: the files in input/
                  ("IMAGE", "MASK"), ("IMAGE", "MASK"), "Load Image"),
    "CreateVideo": ({"required": {"images": ("IMAGE", {}),
                                  "fps": ("FLOAT", {"default": 30.0, "min": 1.0, "max": 120.0, "step": 1.0})},
                     "optional": {"audio": ("AUDIO", {})}},
                    ("VIDEO",), ("VIDEO",), "Create Video"),
    "PreviewImage": ({"required": {"images": ("IMAGE", {})}}, (), (), "Preview Image"),
    "SaveVideo": ({"required": {"video": ("VIDEO", {}), "filename_prefix": ("STRING", {"default": "video/ComfyUI"}),
                                "format": (["auto", "mp4"], {"default": "auto"}),
                                "codec": (["auto", "h264"], {"default": "auto"})}},
                  (), (), "Save Video"),
}

HF21 = "https://huggingface.co/Comfy-Org/Wan_2.1_ComfyUI_repackaged/resolve/main/split_files"
HF22 = "https://huggingface.co/Comfy-Org/Wan_2.2_ComfyUI_Repackaged/resolve/main/split_files"


def model(name: str, directory: str, repo: str = HF21) -> dict:
    return {"name": name, "url": f"{repo}/{directory}/{name}", "directory": directory}


T2V_13B = model("wan2.1_t2v_1.3B_fp16.safetensors", "diffusion_models")
I2V_14B = model("wan2.1_i2v_480p_14B_fp16.safetensors", "diffusion_models")
TI2V_5B = model("wan2.2_ti2v_5B_fp16.safetensors", "diffusion_models", HF22)
T2V_A14B_HIGH = model("wan2.2_t2v_high_noise_14B_fp8_scaled.safetensors", "diffusion_models", HF22)
T2V_A14B_LOW = model("wan2.2_t2v_low_noise_14B_fp8_scaled.safetensors", "diffusion_models", HF22)
UMT5 = model("umt5_xxl_fp8_e4m3fn_scaled.safetensors", "text_encoders")
VAE21 = model("wan_2.1_vae.safetensors", "vae")
VAE22 = model("wan2.2_vae.safetensors", "vae", HF22)
CLIP_H = model("clip_vision_h.safetensors", "clip_vision")
# not repackaged by Comfy-Org: the HPS v2.1 authors' open_clip ViT-H/14 checkpoint
HPS21 = {"name": "HPS_v2.1_compressed.pt", "url": "https://huggingface.co/xswu/HPSv2/resolve/main/HPS_v2.1_compressed.pt",
         "directory": "reward_models"}


# ------------------------------------------------------------------------------------------------
# Compact graph description
# ------------------------------------------------------------------------------------------------

class Graph:
    """Nodes in columns (left to right, stacked top to bottom); links by input/output name."""

    def __init__(self, name: str, title: str):
        self.name, self.title = name, title
        self.nodes: list[dict] = []

    def add(self, key: str, type_: str, col: int, widgets: dict | None = None, links: dict | None = None,
            models: list | None = None, title: str | None = None, size: tuple | None = None) -> str:
        """widgets: {input name: value}, plus "<name>:control" for a control_after_generate value.
        links: {input name: (node key, output name)}."""
        self.nodes.append(dict(key=key, type=type_, col=col, widgets=widgets or {}, links=links or {},
                               models=models or [], title=title, size=size))
        return key

    def note(self, key: str, col: int, title: str, text: str, size=(460, 520)) -> str:
        self.nodes.append(dict(key=key, type="MarkdownNote", col=col, text=text, title=title, size=size))
        return key


def t2v_wan21_13b() -> Graph:
    g = Graph("wanflow_t2v_wan21_1.3b", "Wan2.1 T2V 1.3B")
    g.note("note", 0, "About this workflow", NOTES["t2v13"])
    g.add("model", "WanFlowLoadDiffusionModel", 1, dict(model_name=T2V_13B["name"], weight_dtype="default",
                                                       compute_dtype="auto"), models=[T2V_13B])
    text_encoder_and_vae(g, VAE21)
    g.add("encode", "WanFlowTextEncode", 2, dict(
        positive="A red fox trotting through fresh snow in a birch forest at sunrise, warm golden light "
                 "between the white trunks, its breath steaming in the cold air, cinematic, shallow depth of "
                 "field, tracking shot.",
        negative="", variant="wan2.1 t2v (1.3B / 14B)"), links=dict(text_encoder=("text_encoder", "text_encoder")))
    g.add("latent", "WanFlowEmptyLatent", 2, dict(width=832, height=480, frames=81, batch_size=1),
          links=dict(model=("model", "model")))
    sampler(g, dict(seed=42, steps=30, solver="unipc", shift=8.0, cfg=6.0, denoise=1.0),
            ("encode", "positive"), ("encode", "negative"), ("latent", "latent"))
    decode_and_save(g, fps=16, prefix="wanflow/t2v_wan21_1.3b", native=True)
    return g


def i2v_wan21_14b() -> Graph:
    g = Graph("wanflow_i2v_wan21_14b", "Wan2.1 I2V 14B 480p")
    g.note("note", 0, "About this workflow", NOTES["i2v14"])
    g.add("model", "WanFlowLoadDiffusionModel", 1, dict(model_name=I2V_14B["name"], weight_dtype="default",
                                                       compute_dtype="auto"), models=[I2V_14B])
    text_encoder_and_vae(g, VAE21)
    g.add("clip_vision", "WanFlowLoadCLIPVision", 1, dict(clip_name=CLIP_H["name"], dtype="auto"), models=[CLIP_H])
    g.add("image", "LoadImage", 1, dict(image="example.png"), title="Start image", size=(420, 400))
    g.add("encode", "WanFlowTextEncode", 2, dict(
        positive="A cheerful hand-drawn girl with big blonde hair and a pink dress waves her arms and dances "
                 "on a green hill under a bright blue sky, white clouds drifting slowly, crayon drawing style, "
                 "gentle camera push-in.",
        negative="", variant="wan2.1 i2v 14B"), links=dict(text_encoder=("text_encoder", "text_encoder")))
    g.add("i2v", "WanFlowImageToVideo", 2, dict(width=832, height=480, frames=81, batch_size=1), links=dict(
        positive=("encode", "positive"), negative=("encode", "negative"), vae=("vae", "vae"),
        start_image=("image", "IMAGE"), clip_vision=("clip_vision", "clip_vision")))
    sampler(g, dict(seed=42, steps=40, solver="unipc", shift=3.0, cfg=5.0, denoise=1.0),
            ("i2v", "positive"), ("i2v", "negative"), ("i2v", "latent"))
    decode_and_save(g, fps=16, prefix="wanflow/i2v_wan21_14b")
    return g


def ti2v_wan22_5b() -> Graph:
    g = Graph("wanflow_ti2v_wan22_5b", "Wan2.2 TI2V 5B")
    g.note("note", 0, "About this workflow", NOTES["ti2v5"])
    g.add("model", "WanFlowLoadDiffusionModel", 1, dict(model_name=TI2V_5B["name"], weight_dtype="default",
                                                       compute_dtype="auto"), models=[TI2V_5B])
    text_encoder_and_vae(g, VAE22)
    g.add("image", "LoadImage", 1, dict(image="example.png"), title="Start image", size=(420, 400))
    g.add("encode", "WanFlowTextEncode", 2, dict(
        positive="A cheerful hand-drawn girl with big blonde hair and a pink dress spins around on a green hill "
                 "under a bright blue sky, her hair bouncing, white clouds drifting past, crayon drawing style, "
                 "smooth animation.",
        negative="", variant="wan2.2 ti2v 5B"), links=dict(text_encoder=("text_encoder", "text_encoder")))
    g.add("i2v", "WanFlowImageToVideo", 2, dict(width=1280, height=704, frames=121, batch_size=1), links=dict(
        positive=("encode", "positive"), negative=("encode", "negative"), vae=("vae", "vae"),
        start_image=("image", "IMAGE")))
    sampler(g, dict(seed=42, steps=50, solver="unipc", shift=5.0, cfg=5.0, denoise=1.0),
            ("i2v", "positive"), ("i2v", "negative"), ("i2v", "latent"))
    decode_and_save(g, fps=24, prefix="wanflow/ti2v_wan22_5b")
    return g


def t2v_wan22_a14b() -> Graph:
    g = Graph("wanflow_t2v_wan22_a14b", "Wan2.2 T2V A14B")
    g.note("note", 0, "About this workflow", NOTES["t2va14"])
    g.add("model", "WanFlowLoadDiffusionModel", 1, dict(model_name=T2V_A14B_HIGH["name"],
                                                       weight_dtype="keep file dtype (low memory)",
                                                       compute_dtype="auto"),
          models=[T2V_A14B_HIGH], title="High-noise expert")
    g.add("model_low", "WanFlowLoadDiffusionModel", 1, dict(model_name=T2V_A14B_LOW["name"],
                                                           weight_dtype="keep file dtype (low memory)",
                                                           compute_dtype="auto"),
          models=[T2V_A14B_LOW], title="Low-noise expert")
    text_encoder_and_vae(g, VAE21)
    g.add("encode", "WanFlowTextEncode", 2, dict(
        positive="A vintage red seaplane glides low over a turquoise lagoon at golden hour, its shadow racing "
                 "across the water, palm-covered islands in the distance, aerial tracking shot, cinematic, "
                 "highly detailed.",
        negative="", variant="wan2.2 t2v A14B"), links=dict(text_encoder=("text_encoder", "text_encoder")))
    g.add("latent", "WanFlowEmptyLatent", 2, dict(width=1280, height=720, frames=81, batch_size=1),
          links=dict(model=("model", "model")))
    sampler(g, dict(seed=42, steps=40, solver="unipc", shift=12.0, cfg=4.0, denoise=1.0, cfg_low_noise=3.0,
                    boundary=0.875),
            ("encode", "positive"), ("encode", "negative"), ("latent", "latent"), low=("model_low", "model"))
    decode_and_save(g, fps=16, prefix="wanflow/t2v_wan22_a14b")
    return g


def text_encoder_and_vae(g: Graph, vae: dict):
    g.add("text_encoder", "WanFlowLoadTextEncoder", 1, dict(
        text_encoder_name=UMT5["name"], tokenizer="auto (embedded in the file or next to it)", device="default",
        weight_dtype="default"), models=[UMT5])
    g.add("vae", "WanFlowLoadVAE", 1, dict(vae_name=vae["name"], dtype="auto"), models=[vae])


def sampler(g: Graph, widgets: dict, positive, negative, latent, low=None):
    widgets = {"cfg_low_noise": 0.0, "boundary": 0.0, **widgets, "seed:control": "fixed"}
    links = dict(model=("model", "model"), positive=positive, negative=negative, latent=latent)
    if low:
        links["model_low_noise"] = low
    g.add("sampler", "WanFlowSampler", 3, widgets, links)


def decode_and_save(g: Graph, fps: int, prefix: str, native: bool = False):
    g.add("decode", "WanFlowVAEDecode", 4, dict(tile_size=0), links=dict(samples=("sampler", "latent"),
                                                                     vae=("vae", "vae")))
    g.add("save", "WanFlowSaveVideo", 5, dict(fps=float(fps), filename_prefix=prefix, format="mp4", quality=19),
          links=dict(images=("decode", "images")), size=(420, 420))
    if native:  # the same frames through ComfyUI's own video nodes
        g.add("create_video", "CreateVideo", 5, dict(fps=float(fps)), links=dict(images=("decode", "images")))
        g.add("save_native", "SaveVideo", 5, dict(filename_prefix=prefix + "_native", format="auto", codec="auto"),
              links=dict(video=("create_video", "VIDEO")), size=(420, 420))


LORA_NAME = "wanflow/my_wan21_1.3b_lora"
TRAIN_DEFAULTS = dict(batch_size=1, grad_accum=1, sigma_sampling="shift", shift=5.0, precision="bf16",
                      gradient_checkpointing=True, seed=0, warmup_steps=0, ema_decay=0.0, loss_weighting="none",
                      first_frame_clean=False, save_every=0, **{"seed:control": "fixed"}, validate_every=0, validation_steps=20, validation_cfg=1.0)


def train_lora_wan21_13b() -> Graph:
    g = Graph("wanflow_train_lora_wan21_1.3b", "Train a Wan2.1 T2V 1.3B LoRA")
    g.note("note", 0, "About this workflow", NOTES["train_lora"])
    g.add("model", "WanFlowLoadDiffusionModel", 1, dict(model_name=T2V_13B["name"], weight_dtype="default",
                                                       compute_dtype="auto"), models=[T2V_13B])
    text_encoder_and_vae(g, VAE21)
    g.add("dataset", "WanFlowVideoDataset", 1, dict(folder="wanflow_dataset", buckets="480x480x33, 832x480x33",
                                                   fps=16.0, repeats=1, default_caption="", short_videos="shorten"))
    g.add("cache", "WanFlowCacheLatents", 2, dict(image_conditioning=False), links=dict(
        dataset=("dataset", "dataset"), vae=("vae", "vae"), text_encoder=("text_encoder", "text_encoder")))
    g.add("encode", "WanFlowTextEncode", 2, dict(
        positive="A paper-cut style fox walks through an autumn forest, layered paper leaves falling, soft light.",
        negative="", variant="wan2.1 t2v (1.3B / 14B)"), links=dict(text_encoder=("text_encoder", "text_encoder")))
    g.add("train", "WanFlowTrainLoRA", 3, dict(
        TRAIN_DEFAULTS, output_name=LORA_NAME, steps=1000, learning_rate=1e-4, rank=32, alpha=32.0,
        targets="attention+ffn", boundary=0.875, dropout=0.0, validate_every=250, validation_cfg=5.0), links=dict(
        model=("model", "model"), latents=("cache", "latents"), validation_positive=("encode", "positive"),
        validation_negative=("encode", "negative"), validation_vae=("vae", "vae")), size=(420, 760))
    g.add("loss_plot", "PreviewImage", 4, links=dict(images=("train", "loss_curve")), size=(420, 300),
          title="Loss curve")
    g.add("save_validation", "WanFlowSaveVideo", 4, dict(fps=16.0, filename_prefix="wanflow/lora_validation",
                                                        format="mp4", quality=19),
          links=dict(images=("train", "validation")), size=(420, 420), title="Validation samples")
    g.add("latent", "WanFlowEmptyLatent", 4, dict(width=832, height=480, frames=33, batch_size=1),
          links=dict(model=("model", "model")))
    g.add("sampler", "WanFlowSampler", 5, dict(seed=42, steps=30, solver="unipc", shift=8.0, cfg=6.0, denoise=1.0,
                                               cfg_low_noise=0.0, boundary=0.0, **{"seed:control": "fixed"}),
          links=dict(model=("train", "model"), positive=("encode", "positive"), negative=("encode", "negative"),
                     latent=("latent", "latent")))
    g.add("decode", "WanFlowVAEDecode", 6, dict(tile_size=0), links=dict(samples=("sampler", "latent"), vae=("vae", "vae")))
    g.add("save", "WanFlowSaveVideo", 7, dict(fps=16.0, filename_prefix="wanflow/lora_sample", format="mp4", quality=19),
          links=dict(images=("decode", "images")), size=(420, 420))
    return g


def t2v_wan21_13b_lora() -> Graph:
    g = Graph("wanflow_t2v_wan21_1.3b_lora", "Wan2.1 T2V 1.3B with a LoRA")
    g.note("note", 0, "About this workflow", NOTES["t2v_lora"])
    g.add("base_model", "WanFlowLoadDiffusionModel", 1, dict(model_name=T2V_13B["name"], weight_dtype="default",
                                                            compute_dtype="auto"), models=[T2V_13B])
    g.add("model", "WanFlowLoadLoRA", 1, dict(lora_name=LORA_NAME + ".safetensors", strength_model=1.0),
          links=dict(model=("base_model", "model")))
    text_encoder_and_vae(g, VAE21)
    g.add("encode", "WanFlowTextEncode", 2, dict(
        positive="A paper-cut style fox walks through an autumn forest, layered paper leaves falling, soft light.",
        negative="", variant="wan2.1 t2v (1.3B / 14B)"), links=dict(text_encoder=("text_encoder", "text_encoder")))
    g.add("latent", "WanFlowEmptyLatent", 2, dict(width=832, height=480, frames=81, batch_size=1),
          links=dict(model=("model", "model")))
    sampler(g, dict(seed=42, steps=30, solver="unipc", shift=8.0, cfg=6.0, denoise=1.0),
            ("encode", "positive"), ("encode", "negative"), ("latent", "latent"))
    decode_and_save(g, fps=16, prefix="wanflow/t2v_wan21_1.3b_lora")
    return g


def demo_train() -> Graph:
    """The README demo in ComfyUI: its settings come from wan_core.demo, so the two stay the same."""
    pack = load_pack().__name__
    d = importlib.import_module(pack + ".wan_core.demo").DemoSettings()
    held_out = importlib.import_module(pack + ".wan_core.demo_data").held_out_prompts()
    g = Graph("wanflow_demo_train", "WanFlow demo: train a tiny Wan model from scratch (no downloads)")
    g.note("note", 0, "About this workflow", NOTES["demo"])
    g.add("demo", "WanFlowDemoModels", 1, dict(seed=0, **{"seed:control": "fixed"}))
    g.add("data", "WanFlowDemoDataset", 1, dict(clips_per_combo=d.clips_per_combo, seed=0, **{"seed:control": "fixed"}),
          links=dict(vae=("demo", "vae"), text_encoder=("demo", "text_encoder")))
    g.add("train", "WanFlowTrainFull", 2, dict(
        TRAIN_DEFAULTS, output_name="wanflow/demo_model", steps=d.steps, learning_rate=d.learning_rate,
        batch_size=d.batch_size, sigma_sampling=d.sigma_sampling, precision="fp32", gradient_checkpointing=False,
        warmup_steps=d.warmup_steps, save_dtype="fp32"),
        links=dict(model=("demo", "model"), latents=("data", "latents")), size=(420, 700))
    g.add("loss_plot", "PreviewImage", 3, links=dict(images=("train", "loss_curve")), size=(420, 300),
          title="Loss curve")
    g.add("encode", "WanFlowTextEncode", 3, dict(positive=held_out[0], negative="",
                                                 variant="wan2.1 t2v (1.3B / 14B)"),
          links=dict(text_encoder=("demo", "text_encoder")))
    g.add("latent", "WanFlowEmptyLatent", 3, dict(width=64, height=64, frames=17, batch_size=4),
          links=dict(model=("train", "model")))
    g.add("sampler", "WanFlowSampler", 4, dict(seed=1, steps=d.sample_steps, solver="euler", shift=d.sample_shift,
                                               cfg=1.0, denoise=1.0, cfg_low_noise=0.0, boundary=0.0,
                                               **{"seed:control": "fixed"}),
          links=dict(model=("train", "model"), positive=("encode", "positive"), negative=("encode", "negative"),
                     latent=("latent", "latent")))
    g.add("decode", "WanFlowVAEDecode", 5, dict(tile_size=0), links=dict(samples=("sampler", "latent"),
                                                                     vae=("demo", "vae")))
    g.add("save", "WanFlowSaveVideo", 6, dict(fps=8.0, filename_prefix="wanflow/demo", format="mp4", quality=12),
          links=dict(images=("decode", "images")), size=(420, 420))
    return g


SEED_FIXED = {"seed:control": "fixed"}
COLOUR_REWARD = "colour (demo, no file)"  # WanFlow Load Reward Model's built-in entry
# everyday photographic prompts (HPS v2.1 rewards photographic quality); the held-out ones are never trained on
SRPO_PROMPTS = [
    "A young woman with freckles reading a book by a rain-streaked window, soft natural light, portrait photo.",
    "An old fisherman mending a net on a wooden pier at dawn, mist over the harbour, detailed photograph.",
    "A bowl of ramen with a soft-boiled egg and spring onions on a dark wooden table, close-up food photo.",
    "A red fox sitting in fresh snow in a birch forest, warm sunrise light, wildlife photography.",
    "A narrow cobblestone street in an old European town after rain, warm street lamps, evening.",
    "A golden retriever puppy running across a green meadow full of dandelions, sunny afternoon.",
]
SRPO_HELDOUT = [
    "A portrait of an elderly man with a white beard and a knitted cap, window light, detailed skin.",
    "A mountain lake at sunrise with pine trees reflected in the calm water, landscape photograph.",
]


def srpo_outputs(g: Graph, col: int):
    g.add("reward_curve", "PreviewImage", col, links=dict(images=("srpo", "reward_curve")), size=(520, 420),
          title="Held-out reward and loss")
    g.add("heldout", "PreviewImage", col, links=dict(images=("srpo", "heldout_images")), size=(520, 420),
          title="Held-out images (last evaluation)")


def srpo_demo() -> Graph:
    g = Graph("wanflow_srpo_demo", "WanFlow demo: SRPO reward fine-tuning with a colour reward (no downloads)")
    g.note("note", 0, "About this workflow", NOTES["srpo_demo"], size=(480, 560))
    g.add("demo", "WanFlowDemoModels", 1, dict(seed=0, **SEED_FIXED))
    g.add("reward", "WanFlowLoadRewardModel", 1, dict(reward=COLOUR_REWARD, kind="auto", dtype="fp32",
                                                     device="default"))
    # full fine-tune: the untrained demo DiT's output head is zero, so a LoRA on its blocks gets no gradient.
    # The model ignores the text until trained, so every prompt names one colour (see the note).
    g.add("srpo", "WanFlowSRPOTrain", 2, dict(
        prompts="a red square moving left\na red square moving up\na red square moving down",
        heldout_prompts="a red square moving right", output_name="wanflow/srpo_demo_model", mode="full",
        save_dtype="fp32", steps=20, learning_rate=5e-4, width=64, height=64, rollout_steps=8, guidance=1.0,
        guidance_high=1.0, negative_prompt="a grey square", eval_every=5, precision="fp32",
        gradient_checkpointing=False, **SEED_FIXED),
        links=dict(model=("demo", "model"), vae=("demo", "vae"), text_encoder=("demo", "text_encoder"),
                   reward=("reward", "reward")))
    srpo_outputs(g, 3)
    return g


def srpo_wan22_a14b_low_noise() -> Graph:
    g = Graph("wanflow_srpo_wan22_a14b_low_noise", "SRPO reward fine-tuning of the Wan2.2 T2V A14B low-noise expert")
    pack = load_pack().__name__
    c = importlib.import_module(pack + ".wan_core.srpo").SRPOConfig()
    g.note("note", 0, "About this workflow", srpo_a14b_note(c), size=(520, 760))
    g.add("model", "WanFlowLoadDiffusionModel", 1, dict(model_name=T2V_A14B_LOW["name"],
                                                       weight_dtype="keep file dtype (low memory)",
                                                       compute_dtype="auto"),
          models=[T2V_A14B_LOW], title="Low-noise expert (trained)")
    g.add("model_high", "WanFlowLoadDiffusionModel", 1, dict(model_name=T2V_A14B_HIGH["name"],
                                                            weight_dtype="keep file dtype (low memory)",
                                                            compute_dtype="auto"),
          models=[T2V_A14B_HIGH], title="High-noise expert (rollout only)")
    text_encoder_and_vae(g, VAE21)
    g.add("reward", "WanFlowLoadRewardModel", 1, dict(reward=HPS21["name"], kind="HPS v2.1", dtype="fp32",
                                                     device="default"), models=[HPS21])
    g.add("srpo", "WanFlowSRPOTrain", 2, dict(  # everything else: the node's defaults
        prompts="\n".join(SRPO_PROMPTS), heldout_prompts="\n".join(SRPO_HELDOUT),
        output_name="wanflow/srpo_wan22_a14b_low_noise", **SEED_FIXED),
        links=dict(model=("model", "model"), model_high_noise=("model_high", "model"), vae=("vae", "vae"),
                   text_encoder=("text_encoder", "text_encoder"), reward=("reward", "reward")))
    srpo_outputs(g, 3)
    return g


GRAPHS = [t2v_wan21_13b, i2v_wan21_14b, ti2v_wan22_5b, t2v_wan22_a14b, train_lora_wan21_13b, t2v_wan21_13b_lora,
          demo_train, srpo_demo, srpo_wan22_a14b_low_noise]


# ------------------------------------------------------------------------------------------------
# Notes (MarkdownNote, drawn by the frontend only)
# ------------------------------------------------------------------------------------------------

def files_md(*entries: dict) -> str:
    folders: dict[str, list[str]] = {}
    for e in entries:
        folders.setdefault(e["directory"], []).append(e["name"])
    links = "\n".join(f"- [{e['name']}]({e['url']}) → `models/{e['directory']}/`" for e in entries)
    tree = ["ComfyUI/", "└── models/"]
    dirs = sorted(folders)
    for i, d in enumerate(dirs):
        last = i == len(dirs) - 1
        tree.append(f"    {'└' if last else '├'}── {d}/")
        for j, f in enumerate(folders[d]):
            tree.append(f"    {' ' if last else '│'}   {'└' if j == len(folders[d]) - 1 else '├'}── {f}")
    others = any("/Comfy-Org/" not in e["url"] for e in entries)
    return ("**Model files** (Comfy-Org's repackaged files, as ComfyUI's own Wan templates use"
            + ("; the others from their authors' repositories" if others else "") + ")\n\n"
            + links + "\n\n```\n" + "\n".join(tree) + "\n```\n")


SAMPLER_TIP = ("In **WanFlow Sampler**, 0 in `steps`, `shift`, `cfg`, `cfg_low_noise` or `boundary` means the "
               "official default of the loaded model. The seed is `fixed`; switch it to `randomize` for a new "
               "video on every run.")
NEGATIVE_TIP = "An empty negative prompt uses the official default negative prompt of the chosen `variant`."

NOTES = {
    "demo": """## WanFlow demo: train a tiny Wan model from scratch, no downloads

The README's main job inside ComfyUI, on a CPU in minutes. **WanFlow Demo Models** makes a tiny Wan2.1
T2V DiT with random weights, a fixed stand-in VAE (same latent geometry as the Wan2.1 VAE) and a word
encoder; **WanFlow Demo Dataset** renders coloured squares moving left, right, up or down, captioned
"a red square moving left", leaving some colour × direction combinations out. **WanFlow Train Full**
trains the DiT with the pack's flow-matching trainer (loss curve in the preview), and the usual
Text Encode → Empty Latent → Sampler → VAE Decode chain samples a held-out prompt (4 clips of 64×64,
17 frames; the video shows them one after another).

Try the other held-out prompts (listed by the dataset node), or a seen one. The trained model is also
saved to `models/diffusion_models/wanflow/demo_model.safetensors`.
""",
    "srpo_demo": """## WanFlow demo: SRPO reward fine-tuning, no downloads

SRPO (Direct-Align + Semantic Relative Preference) on the embedded demo's models, on a CPU in under a
minute. **WanFlow Demo Models** makes the tiny demo DiT (random weights), its stand-in VAE and word encoder;
**WanFlow Load Reward Model** with `colour (demo, no file)` is a toy reward: does the image's colour match
the colour named in the prompt? It has the shortcut real rewards have (more saturation scores higher),
which SRPO's control words (`Real`, `Painting`, ...) counter.

**The demo model is untrained**: its images are decoded noise and it ignores the text. So every prompt here names
the same colour (the held-out prompt is never trained on, but SRPO cannot teach an untrained model to
read), `guidance` is 1 (classifier-free guidance means nothing without text conditioning; the negative
prompt is then unused), and `mode` is `full`: its output layer starts at zero, so a LoRA on its blocks
would get no gradient. For a model that follows the prompts, train one with `wanflow_demo_train` and load
`wanflow/demo_model.safetensors` into `model` with **WanFlow Load Diffusion Model** (keep the demo's VAE
and text encoder); then prompts of other colours make sense.

Each of the 20 steps rolls out a 64×64 image in 8 Euler steps, re-noises it inside the σ window, takes
one gradient step down and one up, recovers the image in one step and scores it. Every 5 steps the
held-out prompt is scored (**Held-out reward and loss** preview) with drift monitors; the best weights
are kept and saved to `models/diffusion_models/wanflow/srpo_demo_model.safetensors`. Raise
`learning_rate` to 1e-3 to see the channel-drift monitor stop the run early.
""",
    "train_lora": f"""## WanFlow: train a LoRA for Wan2.1 T2V 1.3B

{files_md(T2V_13B, UMT5, VAE21)}
**Data**: put short videos (mp4/webm) and/or images in `ComfyUI/input/wanflow_dataset/`, each with a
caption in a `.txt` file of the same name (`fox_01.mp4` + `fox_01.txt`). **WanFlow Video Dataset** samples
`1 + 4k` frames at `fps` and crops each clip into the closest bucket (`WxHxF`); files it cannot use are
listed with the reason. **WanFlow Cache Latents** encodes everything once into `output/wanflow_cache/`, so
training steps only run the diffusion model (a second run reuses the cache).

**Training**: **WanFlow Train LoRA** trains with Wan's flow-matching objective and saves the LoRA in
ComfyUI's native format to `models/loras/{LORA_NAME}.safetensors` — it works in ComfyUI's own
**LoraLoaderModelOnly** and in **WanFlow Load LoRA**. The progress bar shows the step, the loss and a live
loss curve; validation samples of the prompt are made every `validate_every` steps and saved as one video.
Interrupting keeps a resumable state: queue again with the same `output_name` to continue.

Memory: rank 32 at 832×480×33 with gradient checkpointing fits in ~16 GB; lower the buckets' frame count
for less. On a CPU only the tiny demo (`wanflow_demo_train`) is practical.
""",
    "t2v_lora": f"""## WanFlow: Wan2.1 T2V 1.3B with a LoRA

{files_md(T2V_13B, UMT5, VAE21)}
**WanFlow Load LoRA** reads LoRAs from `models/loras/` in every common format (ComfyUI / diffusion-pipe,
kohya / musubi-tuner, diffusers / PEFT, DiffSynth-Studio) and shows what it applied. The preset file is the
one `wanflow_train_lora_wan21_1.3b` writes. Chain several loaders to stack LoRAs; the base model is not
changed. Native **LoraLoaderModelOnly** on a native **Load Diffusion Model** works with the same files.

{NEGATIVE_TIP} {SAMPLER_TIP}
""",
    "t2v13": f"""## WanFlow: Wan2.1 text to video, 1.3B

{files_md(T2V_13B, UMT5, VAE21)}
**Settings** (official Wan2.1 T2V-1.3B): 832×480, 81 frames (5 s at 16 fps). The Wan README recommends
`shift` 8–12 and guidance 6 for the 1.3B model (generic default: shift 5, cfg 5); 30 `steps` here for
speed, 50 is the official default.

{NEGATIVE_TIP} {SAMPLER_TIP}

The decoded frames are saved twice: as mp4 by **WanFlow Save Video** (`output/wanflow/`), and through
ComfyUI's native **Create Video** → **Save Video** (the IMAGE output works with any native image node).
""",
    "i2v14": f"""## WanFlow: Wan2.1 image to video, 14B 480p

{files_md(I2V_14B, UMT5, VAE21, CLIP_H)}
Pick your start image in **Load Image** (ComfyUI's `input/example.png` is preset). It is center-cropped to
the video's aspect ratio and resized.

**Settings** (official Wan2.1 I2V-14B, 480p): 832×480, 81 frames at 16 fps, 40 `steps`, `shift` 3.0
(5.0 for 720p: 1280×720 with the 720p model), cfg 5.0. CLIP vision (`clip_vision_h`) is required by the
Wan2.1 I2V models. For lower memory set `weight_dtype` to `fp8_e4m3fn (low memory)`.

{NEGATIVE_TIP} {SAMPLER_TIP}
""",
    "ti2v5": f"""## WanFlow: Wan2.2 text+image to video, 5B

{files_md(TI2V_5B, UMT5, VAE22)}
The 5B model uses the **Wan2.2 VAE** (`wan2.2_vae.safetensors`, 16× downscaling); the other Wan
models use `wan_2.1_vae.safetensors`. No CLIP vision model is needed.

Pick your start image in **Load Image** (`input/example.png` is preset); the start frame is kept as it is
while the rest is generated. For plain text to video, replace **Image To Video** with
**WanFlow Empty Latent** (same size and frames).

**Settings** (official Wan2.2 TI2V-5B): 1280×704 (or 704×1280), 121 frames at **24 fps**, 50 `steps`,
`shift` 5.0, cfg 5.0.

{NEGATIVE_TIP} {SAMPLER_TIP}
""",
    "t2va14": f"""## WanFlow: Wan2.2 text to video, A14B (two experts)

{files_md(T2V_A14B_HIGH, T2V_A14B_LOW, UMT5, VAE21)}
Wan2.2 A14B is a mixture of two 14B experts: the **high-noise** expert (sampler input `model`) runs the
early steps, the **low-noise** expert (`model_low_noise`) the rest. The switch happens at `boundary`
(a fraction of the 1000 training timesteps). The fp8 files stay in fp8 (`weight_dtype`
`keep file dtype (low memory)`) and are upcast one layer at a time.

**Settings** (official Wan2.2 T2V-A14B): 1280×720 (or 832×480), 81 frames at 16 fps, 40 `steps`,
`shift` 12.0, cfg 4.0 (high-noise) / 3.0 (low-noise), `boundary` 0.875. The VAE is the Wan2.1 one.

{NEGATIVE_TIP} {SAMPLER_TIP}
""",
}


def srpo_a14b_note(c) -> str:
    """The A14B SRPO note, its numbers taken from SRPOConfig `c` (the node's defaults)."""
    checkpointing = " with gradient checkpointing" if c.gradient_checkpointing else ""
    return f"""## WanFlow: SRPO reward fine-tuning of Wan2.2 T2V A14B (low-noise expert)

{files_md(T2V_A14B_LOW, T2V_A14B_HIGH, UMT5, VAE21, HPS21)}
**WanFlow SRPO Train** fine-tunes the **low-noise expert** (input `model`) with a LoRA against
**HPS v2.1** (text to image, one frame). Each step rolls out an image without gradient (Euler + CFG; the
**high-noise expert** on `model_high_noise` takes the steps above `boundary` {c.boundary} and is never trained),
re-noises it with the same noise at a σ* drawn from the window {c.sigma_window[0]}–{c.sigma_window[1]}
(inside the low-noise expert's range), takes one gradient-carrying step down and one up, recovers the image in one step, decodes it
with the frozen Wan2.1 VAE and scores it. Control words (`positive_words` / `negative_words`) go to the
reward's text only. The held-out prompts are scored every `eval_every` steps with drift monitors
(saturation, latent channel statistics, flow-matching loss); a run that drifts stops and the best
weights are kept. The LoRA goes to `models/loras/wanflow/srpo_wan22_a14b_low_noise.safetensors`
(ComfyUI format: use it on the low-noise expert in `wanflow_t2v_wan22_a14b` with **WanFlow Load LoRA**).
Interrupting keeps a resumable state; queue again with the same settings to continue.

**HPS v2.1** is the authors' open_clip ViT-H/14 checkpoint `HPS_v2.1_compressed.pt` (Hugging Face
`xswu/HPSv2`), in `models/reward_models/`. Its tokenizer comes from ComfyUI's bundled CLIP tokenizer
(`comfy/sd1_tokenizer`, the same BPE open_clip uses) unless a CLIP tokenizer (`vocab.json` + `merges.txt`)
sits next to the file.

**Settings**: the node's defaults: {c.width}×{c.height}, {c.steps} steps, learning rate {c.learning_rate:g},
LoRA rank {c.lora_rank}, rollout {c.rollout_steps} steps at CFG {c.guidance:g}, {c.precision} autocast{checkpointing}.
The fp8 experts stay in fp8 (`weight_dtype` `keep file dtype (low memory)`, upcast one layer at a time);
the LoRA weights stay fp32. For less GPU memory set the reward's `dtype` to bf16 and `decode_tile` to 32.
"""


# ------------------------------------------------------------------------------------------------
# Building the two formats
# ------------------------------------------------------------------------------------------------

def load_pack():
    """The pack's node classes, imported the way ComfyUI imports a custom-node folder. File dropdowns
    are listed from an empty folder, so the output does not depend on local model files."""
    for module in list(sys.modules.values()):
        # a package only: pytest imports the pack's __init__.py as a lone module "__init__" (no nodes)
        # when the checkout's folder name is no valid package name (e.g. "wan-flow")
        if getattr(module, "__file__", None) == str(PACK_DIR / "__init__.py") and \
                hasattr(module, "__path__") and hasattr(module, "NODE_CLASS_MAPPINGS"):
            return module
    os.environ.setdefault("WANFLOW_MODELS_DIR", tempfile.mkdtemp(prefix="wanflow-no-models-"))
    spec = importlib.util.spec_from_file_location("wanflow_pack_workflows", PACK_DIR / "__init__.py",
                                                  submodule_search_locations=[str(PACK_DIR)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def node_defs(pack) -> dict:
    """type -> (INPUT_TYPES, RETURN_TYPES, output names, display title, cnr_id, ver)."""
    defs = {k: (*v, "comfy-core", CORE_VER) for k, v in CORE_NODES.items()}
    for name, cls in pack.NODE_CLASS_MAPPINGS.items():
        names = getattr(cls, "RETURN_NAMES", None) or cls.RETURN_TYPES
        defs[name] = (cls.INPUT_TYPES(), tuple(cls.RETURN_TYPES), tuple(names),
                      pack.NODE_DISPLAY_NAME_MAPPINGS.get(name, name), PACK_ID, PACK_VER)
    return defs


def inputs_of(spec: dict):
    """[(name, type, options, opts, optional)] in INPUT_TYPES order; combos get type COMBO."""
    out = []
    for section in ("required", "optional"):
        for name, entry in spec.get(section, {}).items():
            kind, opts = entry[0], (entry[1] if len(entry) > 1 else {})
            if isinstance(kind, (list, tuple)):
                out.append((name, "COMBO", list(kind), opts, section == "optional"))
            else:
                out.append((name, kind, None, opts, section == "optional"))
    return out


def check_value(where: str, kind: str, options, opts: dict, value):
    if kind == "COMBO":
        # file dropdowns list local files: any model file name (or, with an upload button, input file) goes
        ok = value in (options or []) or isinstance(value, str) and (
            value.endswith(MODEL_SUFFIXES) or bool(opts.get("image_upload")))
        assert ok, f"{where}: {value!r} not in {options}"
    elif kind == "INT":
        assert isinstance(value, int) and not isinstance(value, bool), where
    elif kind == "FLOAT":
        assert isinstance(value, (int, float)) and not isinstance(value, bool), where
    elif kind == "STRING":
        assert isinstance(value, str), where
    elif kind == "BOOLEAN":
        assert isinstance(value, bool), where
    if kind in ("INT", "FLOAT"):
        assert opts.get("min", value) <= value <= opts.get("max", value), f"{where}: {value} out of range"


def estimate_size(n_rows: int, widgets: list[tuple[str, dict]]) -> list[int]:
    """A plausible node size (the frontend keeps what the file says; users resize freely)."""
    height = 30 + 22 * n_rows
    for kind, opts in widgets:
        height += 110 if kind == "STRING" and opts.get("multiline") else 24
    return [360, height + 8]


def build(g: Graph, defs: dict) -> tuple[dict, dict]:
    # ids: the executed nodes first (API ids 1, 2, ...), the notes last
    ranked = sorted(g.nodes, key=lambda n: n["type"] == "MarkdownNote")
    ids = {n["key"]: i for i, n in enumerate(ranked, start=1)}
    by_key = {n["key"]: n for n in g.nodes}
    for n in g.nodes:
        assert n["type"] == "MarkdownNote" or n["type"] in defs, f"{g.name}: unknown node type {n['type']}"

    # links, numbered in the order of the nodes and their inputs
    links, out_links, in_link = [], {}, {}
    ui_nodes = {}
    for n in g.nodes:
        if n["type"] == "MarkdownNote":
            continue
        spec, returns, out_names, *_ = defs[n["type"]]
        sockets = [(name, kind, optional) for name, kind, _, _, optional in inputs_of(spec) if kind not in WIDGET_TYPES]
        widgets = [(name, kind, optional) for name, kind, _, _, optional in inputs_of(spec) if kind in WIDGET_TYPES]
        unknown = set(n["links"]) - {s[0] for s in sockets}
        assert not unknown, f"{g.name}/{n['key']}: no socket input {unknown}"
        # frontend 1.27 (litegraphService #addInputs): socket-only inputs first, then one socket per widget
        order = sockets + widgets
        for slot, (name, kind, _) in enumerate(order):
            if name in n["links"]:
                src, out_name = n["links"][name]
                src_names = defs[by_key[src]["type"]][2]
                o_slot = src_names.index(out_name)
                o_type = defs[by_key[src]["type"]][1][o_slot]
                # type sets must overlap (a union output like "WANFLOW_MODEL,MODEL" links into either)
                assert set(o_type.split(",")) & set(kind.split(",")) or kind == "*", \
                    f"{g.name}: {src}.{out_name} ({o_type}) -> {n['key']}.{name} ({kind})"
                link_id = len(links) + 1
                # the frontend stores input.type || output.type as the link type
                links.append([link_id, ids[src], o_slot, ids[n["key"]], slot, kind])
                out_links.setdefault((src, o_slot), []).append(link_id)
                in_link[(n["key"], name)] = link_id
        for name, kind, optional in sockets:
            assert optional or name in n["links"], f"{g.name}/{n['key']}: required input {name} not connected"
        ui_nodes[n["key"]] = order

    order_index = topological_order(g, by_key)
    # columns: x from the widest node of the columns to the left; nodes stacked in each column
    sizes = {}
    for n in g.nodes:
        if n["size"]:
            sizes[n["key"]] = list(n["size"])
        else:
            spec, returns = defs[n["type"]][:2]
            specs = inputs_of(spec)
            n_sock = sum(1 for s in specs if s[1] not in WIDGET_TYPES)
            widget_specs = [(s[1], s[3]) for s in specs if s[1] in WIDGET_TYPES]
            widget_specs += [("INT", {})] * sum(1 for s in specs if s[3].get("control_after_generate"))
            sizes[n["key"]] = estimate_size(max(n_sock, len(returns)), widget_specs)
            if n["type"].startswith("WanFlowLoad"):  # room for the long file names
                sizes[n["key"]][0] = 420
    cols = sorted({n["col"] for n in g.nodes})
    x, col_x = 40, {}
    for c in cols:
        col_x[c] = x
        x += max(sizes[n["key"]][0] for n in g.nodes if n["col"] == c) + 60
    y_next = {c: 80 for c in cols}
    pos = {}
    for n in g.nodes:
        pos[n["key"]] = [col_x[n["col"]], y_next[n["col"]]]
        y_next[n["col"]] += sizes[n["key"]][1] + 60

    nodes_ui, prompt = [], {}
    for n in g.nodes:
        nid = ids[n["key"]]
        base = {"id": nid, "type": n["type"], "pos": pos[n["key"]], "size": sizes[n["key"]], "flags": {},
                "order": order_index[n["key"]], "mode": 0}
        if n["type"] == "MarkdownNote":
            nodes_ui.append({**base, "inputs": [], "outputs": [], "title": n["title"], "properties": {},
                             "widgets_values": [n["text"]], "color": "#432", "bgcolor": "#653"})
            continue
        spec, returns, out_names, title, cnr_id, ver = defs[n["type"]]
        specs = {s[0]: s for s in inputs_of(spec)}
        inputs = []
        for name, kind, optional in ui_nodes[n["key"]]:
            slot = {"localized_name": name, "name": name}
            if optional:
                slot["shape"] = OPTIONAL_SHAPE
            slot["type"] = kind
            if kind in WIDGET_TYPES:
                slot["widget"] = {"name": name}
            slot["link"] = in_link.get((n["key"], name))
            inputs.append(slot)
        values, api_inputs, upload = [], {}, False
        extra = set(n["widgets"]) - set(specs) - {f"{k}:control" for k in specs}
        assert not extra, f"{g.name}/{n['key']}: unknown widgets {extra}"
        for name, (_, kind, options, opts, _) in specs.items():
            if kind not in WIDGET_TYPES:
                continue
            value = n["widgets"][name] if name in n["widgets"] else opts["default"]
            check_value(f"{g.name}/{n['key']}.{name}", kind, options, opts, value)
            values.append(value)
            api_inputs[name] = value
            if opts.get("control_after_generate"):
                values.append(n["widgets"].get(f"{name}:control", "fixed"))
            upload |= bool(opts.get("image_upload"))
        if upload:  # LoadImage: the upload button ("image"), the frontend's last widget, never sent to the server
            inputs.append({"localized_name": "upload", "name": "upload", "type": "IMAGEUPLOAD",
                           "widget": {"name": "upload"}, "link": None})
            values.append("image")
        for name, _, _ in ui_nodes[n["key"]]:  # graphToPrompt: widget values, then links in socket order
            if name in n["links"]:
                src, out_name = n["links"][name]
                api_inputs[name] = [str(ids[src]), defs[by_key[src]["type"]][2].index(out_name)]
        outputs = []
        for slot, (kind, name) in enumerate(zip(returns, out_names)):
            outputs.append({"localized_name": name, "name": name, "type": kind,
                            "links": out_links.get((n["key"], slot), []), "slot_index": slot})
        properties = {"Node name for S&R": n["type"], "cnr_id": cnr_id, "ver": ver}
        if n["models"]:
            properties["models"] = n["models"]
        node = {**base, "inputs": inputs, "outputs": outputs}
        if n["title"]:
            node["title"] = n["title"]
        nodes_ui.append({**node, "properties": properties, "widgets_values": values})
        prompt[str(nid)] = {"class_type": n["type"], "inputs": api_inputs, "_meta": {"title": n["title"] or title}}

    ui = {
        "id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"https://github.com/wan-flow/wan-flow/workflows/{g.name}")),
        "revision": 0,
        "last_node_id": len(g.nodes),
        "last_link_id": len(links),
        "nodes": sorted(nodes_ui, key=lambda node: node["id"]),
        "links": links,
        "floatingLinks": [],
        "groups": [],
        "definitions": {"subgraphs": []},
        "config": {"links_ontop": False, "align_to_grid": False},
        "extra": {"ds": {"scale": 0.8, "offset": [0, 0]}, "frontendVersion": FRONTEND_VERSION, "reroutes": [],
                  "linkExtensions": []},
        "version": 0.4,
    }
    return ui, prompt


def topological_order(g: Graph, by_key: dict) -> dict:
    """Execution order as the frontend stores it in `order`: sources first, ties by position in the list."""
    deps = {n["key"]: {src for src, _ in n.get("links", {}).values()} for n in g.nodes}
    done, order = [], {}
    while len(done) < len(g.nodes):
        ready = [n["key"] for n in g.nodes if n["key"] not in order and deps[n["key"]] <= set(done)]
        assert ready, f"{g.name}: cycle"
        key = ready[0]
        order[key] = len(done)
        done.append(key)
    return order


def dump(obj) -> str:
    return json.dumps(obj, indent=1, ensure_ascii=False) + "\n"


def outputs(pack=None) -> dict[Path, str]:
    """{path: file text} of every generated file."""
    defs = node_defs(pack or load_pack())
    files = {}
    for make in GRAPHS:
        g = make()
        ui, prompt = build(g, defs)
        files[WORKFLOWS / f"{g.name}.json"] = dump(ui)
        files[WORKFLOWS / "api" / f"{g.name}.json"] = dump(prompt)
    return files


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="only report files that differ; exit 1 if any")
    args = parser.parse_args(argv)
    stale = []
    for path, text in outputs().items():
        rel = path.relative_to(PACK_DIR)
        if path.exists() and path.read_text(encoding="utf-8") == text:
            continue
        stale.append(rel)
        if not args.check:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
            print(f"wrote {rel}")
    if args.check and stale:
        print("out of date (run scripts/make_workflows.py):", *stale, sep="\n  ")
        return 1
    if not stale:
        print("all generated workflows are up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
