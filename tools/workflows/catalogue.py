"""The workflow catalogue: which example workflows the pack ships, their nodes, links and widget
values, and the model files they load (names and download URLs). Each workflow is a function that
returns its Graph; WORKFLOWS lists them in the order they are generated. The text of each workflow's
note is in notes/<workflow name>.md.

Every executed node is in one group, left to right: "models" (loaders), "data" (prompts, images,
datasets), "training" (a trainer with its settings node, drawn collapsed) or "generation" (latent,
sampler, decode), "outputs" (what is saved or previewed). Trainers are the current nodes (WanFlow Train
LoRA / Train Full / SRPO Train), each with its settings node on its `settings` input; a value a workflow
sets that is not on the trainer is set on the settings node.
"""
from __future__ import annotations

from .notes import note_text
from .pack import pack_module
from .serializer import Graph

HF21 = "https://huggingface.co/Comfy-Org/Wan_2.1_ComfyUI_repackaged/resolve/main/split_files"
HF22 = "https://huggingface.co/Comfy-Org/Wan_2.2_ComfyUI_Repackaged/resolve/main/split_files"


def model_file(name: str, directory: str, repo: str = HF21) -> dict:
    """A model file as the UI workflow lists it (properties.models): ComfyUI offers to download it."""
    return {"name": name, "url": f"{repo}/{directory}/{name}", "directory": directory}


T2V_13B = model_file("wan2.1_t2v_1.3B_fp16.safetensors", "diffusion_models")
I2V_14B = model_file("wan2.1_i2v_480p_14B_fp16.safetensors", "diffusion_models")
TI2V_5B = model_file("wan2.2_ti2v_5B_fp16.safetensors", "diffusion_models", HF22)
T2V_A14B_HIGH = model_file("wan2.2_t2v_high_noise_14B_fp8_scaled.safetensors", "diffusion_models", HF22)
T2V_A14B_LOW = model_file("wan2.2_t2v_low_noise_14B_fp8_scaled.safetensors", "diffusion_models", HF22)
UMT5 = model_file("umt5_xxl_fp8_e4m3fn_scaled.safetensors", "text_encoders")
VAE21 = model_file("wan_2.1_vae.safetensors", "vae")
VAE22 = model_file("wan2.2_vae.safetensors", "vae", HF22)
CLIP_H = model_file("clip_vision_h.safetensors", "clip_vision")
# not repackaged by Comfy-Org: the HPS v2.1 authors' open_clip ViT-H/14 checkpoint
HPS21 = {"name": "HPS_v2.1_compressed.pt", "url": "https://huggingface.co/xswu/HPSv2/resolve/main/HPS_v2.1_compressed.pt",
         "directory": "reward_models"}


def about(g: Graph, models: tuple = (), size: tuple = (440, 380), **fields):
    """The workflow's note "About this workflow", leftmost: notes/<workflow name>.md listing `models`."""
    g.note("note", "About this workflow", note_text(g.name, models, **fields), size=size)


KEEP_FILE_DTYPE = "keep file dtype (low memory)"  # fp8 files stay fp8, upcast one layer at a time
SEED_FIXED = {"seed:control": "fixed"}


def diffusion_model(g: Graph, key: str, file: dict, weight_dtype: str = "default", title: str | None = None):
    """A WanFlow Load Diffusion Model node for `file` (a model_file entry) in the models group."""
    g.add(key, "WanFlowLoadDiffusionModel", "models", 0, dict(model_name=file["name"], weight_dtype=weight_dtype,
                                                              compute_dtype="auto"), models=[file], title=title)


def t2v_wan21_13b() -> Graph:
    g = Graph("wanflow_t2v_wan21_1.3b", "Wan2.1 T2V 1.3B")
    about(g, (T2V_13B, UMT5, VAE21))
    diffusion_model(g, "model", T2V_13B)
    text_encoder_and_vae(g, VAE21)
    text_encode(g, "wan2.1 t2v (1.3B / 14B)",
                "A red fox trotting through fresh snow in a birch forest at sunrise, warm golden light "
                "between the white trunks, its breath steaming in the cold air, cinematic, shallow depth of "
                "field, tracking shot.")
    empty_latent(g, dict(width=832, height=480, frames=81, batch_size=1))
    sampler(g, dict(seed=42, steps=30, solver="unipc", shift=8.0, cfg=6.0, denoise=1.0),
            ("encode", "positive"), ("encode", "negative"), ("latent", "latent"))
    decode_and_save(g, fps=16, prefix="wanflow/t2v_wan21_1.3b", native=True)
    return g


def i2v_wan21_14b() -> Graph:
    g = Graph("wanflow_i2v_wan21_14b", "Wan2.1 I2V 14B 480p")
    about(g, (I2V_14B, UMT5, VAE21, CLIP_H))
    diffusion_model(g, "model", I2V_14B)
    text_encoder_and_vae(g, VAE21)
    g.add("clip_vision", "WanFlowLoadCLIPVision", "models", 0, dict(clip_name=CLIP_H["name"], dtype="auto"),
          models=[CLIP_H])
    g.add("image", "LoadImage", "data", 0, dict(image="example.png"), title="Start image", size=(420, 400))
    text_encode(g, "wan2.1 i2v 14B",
                "A cheerful hand-drawn girl with big blonde hair and a pink dress waves her arms and dances "
                "on a green hill under a bright blue sky, white clouds drifting slowly, crayon drawing style, "
                "gentle camera push-in.")
    g.add("i2v", "WanFlowImageToVideo", "generation", 0, dict(width=832, height=480, frames=81, batch_size=1),
          links=dict(positive=("encode", "positive"), negative=("encode", "negative"), vae=("vae", "vae"),
                     start_image=("image", "IMAGE"), clip_vision=("clip_vision", "clip_vision")))
    sampler(g, dict(seed=42, steps=40, solver="unipc", shift=3.0, cfg=5.0, denoise=1.0),
            ("i2v", "positive"), ("i2v", "negative"), ("i2v", "latent"))
    decode_and_save(g, fps=16, prefix="wanflow/i2v_wan21_14b")
    return g


def ti2v_wan22_5b() -> Graph:
    g = Graph("wanflow_ti2v_wan22_5b", "Wan2.2 TI2V 5B")
    about(g, (TI2V_5B, UMT5, VAE22))
    diffusion_model(g, "model", TI2V_5B)
    text_encoder_and_vae(g, VAE22)
    g.add("image", "LoadImage", "data", 0, dict(image="example.png"), title="Start image", size=(420, 400))
    text_encode(g, "wan2.2 ti2v 5B",
                "A cheerful hand-drawn girl with big blonde hair and a pink dress spins around on a green hill "
                "under a bright blue sky, her hair bouncing, white clouds drifting past, crayon drawing style, "
                "smooth animation.")
    g.add("i2v", "WanFlowImageToVideo", "generation", 0, dict(width=1280, height=704, frames=121, batch_size=1),
          links=dict(positive=("encode", "positive"), negative=("encode", "negative"), vae=("vae", "vae"),
                     start_image=("image", "IMAGE")))
    sampler(g, dict(seed=42, steps=50, solver="unipc", shift=5.0, cfg=5.0, denoise=1.0),
            ("i2v", "positive"), ("i2v", "negative"), ("i2v", "latent"))
    decode_and_save(g, fps=24, prefix="wanflow/ti2v_wan22_5b")
    return g


def t2v_wan22_a14b() -> Graph:
    g = Graph("wanflow_t2v_wan22_a14b", "Wan2.2 T2V A14B")
    about(g, (T2V_A14B_HIGH, T2V_A14B_LOW, UMT5, VAE21))
    diffusion_model(g, "model", T2V_A14B_HIGH, weight_dtype=KEEP_FILE_DTYPE, title="High-noise expert")
    diffusion_model(g, "model_low", T2V_A14B_LOW, weight_dtype=KEEP_FILE_DTYPE, title="Low-noise expert")
    text_encoder_and_vae(g, VAE21)
    text_encode(g, "wan2.2 t2v A14B",
                "A vintage red seaplane glides low over a turquoise lagoon at golden hour, its shadow racing "
                "across the water, palm-covered islands in the distance, aerial tracking shot, cinematic, "
                "highly detailed.")
    empty_latent(g, dict(width=1280, height=720, frames=81, batch_size=1))
    sampler(g, dict(seed=42, steps=40, solver="unipc", shift=12.0, cfg=4.0, denoise=1.0, cfg_low_noise=3.0,
                    boundary=0.875),
            ("encode", "positive"), ("encode", "negative"), ("latent", "latent"), low=("model_low", "model"))
    decode_and_save(g, fps=16, prefix="wanflow/t2v_wan22_a14b")
    return g


def text_encoder_and_vae(g: Graph, vae: dict):
    g.add("text_encoder", "WanFlowLoadTextEncoder", "models", 0, dict(
        text_encoder_name=UMT5["name"], tokenizer="auto (embedded in the file or next to it)", device="default",
        weight_dtype="default"), models=[UMT5])
    g.add("vae", "WanFlowLoadVAE", "models", 0, dict(vae_name=vae["name"], dtype="auto"), models=[vae])


def text_encode(g: Graph, variant: str, positive: str, col: int = 0, text_encoder=("text_encoder", "text_encoder")):
    """WanFlow Text Encode of `positive` (empty negative: the variant's official default), in the data group."""
    g.add("encode", "WanFlowTextEncode", "data", col, dict(positive=positive, negative="", variant=variant),
          links=dict(text_encoder=text_encoder))


def empty_latent(g: Graph, widgets: dict, model=("model", "model")):
    g.add("latent", "WanFlowEmptyLatent", "generation", 0, widgets, links=dict(model=model))


def sampler(g: Graph, widgets: dict, positive, negative, latent, low=None, model=("model", "model")):
    widgets = {"cfg_low_noise": 0.0, "boundary": 0.0, **widgets, **SEED_FIXED}
    links = dict(model=model, positive=positive, negative=negative, latent=latent)
    if low:
        links["model_low_noise"] = low
    g.add("sampler", "WanFlowSampler", "generation", 1, widgets, links)


def decode_and_save(g: Graph, fps: int, prefix: str, native: bool = False, vae=("vae", "vae"), quality: int = 19,
                    save_col: int = 0):
    g.add("decode", "WanFlowVAEDecode", "generation", 2, dict(tile_size=0), links=dict(samples=("sampler", "latent"),
                                                                                    vae=vae))
    g.add("save", "WanFlowSaveVideo", "outputs", save_col, dict(fps=float(fps), filename_prefix=prefix, format="mp4",
                                                          quality=quality),
          links=dict(images=("decode", "images")), size=(420, 420))
    if native:  # the same frames through ComfyUI's own video nodes
        g.add("create_video", "CreateVideo", "outputs", 1, dict(fps=float(fps)), links=dict(images=("decode", "images")))
        g.add("save_native", "SaveVideo", "outputs", 1, dict(filename_prefix=prefix + "_native", format="auto",
                                                              codec="auto"),
              links=dict(video=("create_video", "VIDEO")), size=(420, 420))


def trainer(g: Graph, key: str, type_: str, settings_type: str, widgets: dict, settings: dict, links: dict):
    """A trainer node and its settings node (drawn collapsed, left of it, wired to its `settings` input) in
    the training group. `settings`: the settings node's values that differ from its defaults."""
    g.add(key + "_settings", settings_type, "training", 0, settings, collapsed=True)
    g.add(key, type_, "training", 1, {**widgets, **SEED_FIXED}, links={**links, "settings": (key + "_settings",
                                                                                           "settings")})
    return key


def metrics_preview(g: Graph, trainer_key: str):
    g.add("metrics_plot", "PreviewImage", "outputs", 0, links=dict(images=(trainer_key, "metrics")), size=(420, 300),
          title="Training metrics")


LORA_NAME = "wanflow/my_wan21_1.3b_lora"
# the training's validation prompt, and the prompt of the workflow that uses the LoRA
LORA_PROMPT = "A paper-cut style fox walks through an autumn forest, layered paper leaves falling, soft light."


def train_lora_wan21_13b() -> Graph:
    g = Graph("wanflow_train_lora_wan21_1.3b", "Train a Wan2.1 T2V 1.3B LoRA")
    about(g, (T2V_13B, UMT5, VAE21), lora_name=LORA_NAME)
    diffusion_model(g, "model", T2V_13B)
    text_encoder_and_vae(g, VAE21)
    g.add("dataset", "WanFlowVideoDataset", "data", 0, dict(
        folder="wanflow_dataset", buckets="480x480x33, 832x480x33", fps=16.0, repeats=1, default_caption="",
        short_videos="shorten"))
    g.add("cache", "WanFlowCacheLatents", "data", 1, dict(image_conditioning=False), links=dict(
        dataset=("dataset", "dataset"), vae=("vae", "vae"), text_encoder=("text_encoder", "text_encoder")))
    text_encode(g, "wan2.1 t2v (1.3B / 14B)", LORA_PROMPT)
    trainer(g, "train", "WanFlowLoRATraining", "WanFlowTrainingSettings", dict(
        output_name=LORA_NAME, steps=1000, learning_rate=1e-4, lora_rank=32, lora_alpha=32.0,
        lora_targets="attention+ffn", seed=0),
        settings=dict(validate_every=250, validation_steps=20, validation_cfg=5.0),
        links=dict(model=("model", "model"), latents=("cache", "latents"), validation_positive=("encode", "positive"),
                   validation_negative=("encode", "negative"), validation_vae=("vae", "vae")))
    # a sample of the trained LoRA: the validation prompt at 832x480, 33 frames
    empty_latent(g, dict(width=832, height=480, frames=33, batch_size=1))
    sampler(g, dict(seed=42, steps=30, solver="unipc", shift=8.0, cfg=6.0, denoise=1.0),
            ("encode", "positive"), ("encode", "negative"), ("latent", "latent"), model=("train", "model"))
    metrics_preview(g, "train")
    g.add("save_validation", "WanFlowSaveVideo", "outputs", 0, dict(fps=16.0, filename_prefix="wanflow/lora_validation",
                                                                    format="mp4", quality=19),
          links=dict(images=("train", "validation")), size=(420, 420), title="Validation samples")
    decode_and_save(g, fps=16, prefix="wanflow/lora_sample", save_col=1)
    return g


def t2v_wan21_13b_lora() -> Graph:
    g = Graph("wanflow_t2v_wan21_1.3b_lora", "Wan2.1 T2V 1.3B with a LoRA")
    about(g, (T2V_13B, UMT5, VAE21))
    diffusion_model(g, "base_model", T2V_13B)
    g.add("model", "WanFlowLoadLoRA", "models", 0, dict(lora_name=LORA_NAME + ".safetensors", strength_model=1.0),
          links=dict(model=("base_model", "model")))
    text_encoder_and_vae(g, VAE21)
    text_encode(g, "wan2.1 t2v (1.3B / 14B)", LORA_PROMPT)
    empty_latent(g, dict(width=832, height=480, frames=81, batch_size=1))
    sampler(g, dict(seed=42, steps=30, solver="unipc", shift=8.0, cfg=6.0, denoise=1.0),
            ("encode", "positive"), ("encode", "negative"), ("latent", "latent"))
    decode_and_save(g, fps=16, prefix="wanflow/t2v_wan21_1.3b_lora")
    return g


def demo_train() -> Graph:
    """The README demo in ComfyUI: its settings come from wan_core.demo.run, so the two stay the same."""
    d = pack_module("wan_core.demo.run").DemoSettings()
    held_out = pack_module("wan_core.demo.data").held_out_prompts()
    g = Graph("wanflow_demo_train", "WanFlow demo: train a tiny Wan model from scratch (no downloads)")
    about(g)
    g.add("demo", "WanFlowDemoModels", "models", 0, dict(seed=0, **SEED_FIXED))
    g.add("data", "WanFlowDemoDataset", "data", 0, dict(clips_per_combo=d.clips_per_combo, seed=0, **SEED_FIXED),
          links=dict(vae=("demo", "vae"), text_encoder=("demo", "text_encoder")))
    text_encode(g, "wan2.1 t2v (1.3B / 14B)", held_out[0], text_encoder=("demo", "text_encoder"))
    trainer(g, "train", "WanFlowFullTraining", "WanFlowTrainingSettings", dict(
        output_name="wanflow/demo_model", steps=d.steps, learning_rate=d.learning_rate, seed=0, save_dtype="fp32"),
        settings=dict(batch_size=d.batch_size, warmup_steps=d.warmup_steps, sigma_sampling=d.sigma_sampling,
                      precision="fp32", gradient_checkpointing=False),
        links=dict(model=("demo", "model"), latents=("data", "latents")))
    empty_latent(g, dict(width=64, height=64, frames=17, batch_size=4), model=("train", "model"))
    sampler(g, dict(seed=1, steps=d.sample_steps, solver="euler", shift=d.sample_shift, cfg=1.0, denoise=1.0),
            ("encode", "positive"), ("encode", "negative"), ("latent", "latent"), model=("train", "model"))
    metrics_preview(g, "train")
    decode_and_save(g, fps=8, prefix="wanflow/demo", vae=("demo", "vae"), quality=12)
    return g


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


def srpo_outputs(g: Graph):
    g.add("reward_curve", "PreviewImage", "outputs", 0, links=dict(images=("srpo", "reward_curve")), size=(520, 420),
          title="Held-out reward and loss")
    g.add("heldout", "PreviewImage", "outputs", 0, links=dict(images=("srpo", "heldout_images")), size=(520, 420),
          title="Held-out images (last evaluation)")


def srpo_demo() -> Graph:
    g = Graph("wanflow_srpo_demo", "WanFlow demo: SRPO reward fine-tuning with a colour reward (no downloads)")
    about(g)
    g.add("demo", "WanFlowDemoModels", "models", 0, dict(seed=0, **SEED_FIXED))
    g.add("reward", "WanFlowLoadRewardModel", "models", 0, dict(reward=COLOUR_REWARD, kind="auto", dtype="fp32",
                                                               device="default"))
    # full fine-tune: the untrained demo DiT's output head is zero, so a LoRA on its blocks gets no gradient.
    # The model ignores the text until trained, so every prompt names one colour (see the note).
    trainer(g, "srpo", "WanFlowSRPOTraining", "WanFlowSRPOSettings", dict(
        prompts="a red square moving left\na red square moving up\na red square moving down",
        heldout_prompts="a red square moving right", output_name="wanflow/srpo_demo_model", mode="full",
        steps=20, learning_rate=5e-4, width=64, height=64, seed=0),
        settings=dict(rollout_steps=8, guidance=1.0, guidance_high=1.0, negative_prompt="a grey square",
                      eval_every=5, precision="fp32", gradient_checkpointing=False, save_dtype="fp32"),
        links=dict(model=("demo", "model"), vae=("demo", "vae"), text_encoder=("demo", "text_encoder"),
                   reward=("reward", "reward")))
    srpo_outputs(g)
    return g


def srpo_wan22_a14b_low_noise() -> Graph:
    g = Graph("wanflow_srpo_wan22_a14b_low_noise", "SRPO reward fine-tuning of the Wan2.2 T2V A14B low-noise expert")
    c = pack_module("wan_core.rewards.srpo").SRPOConfig()  # the nodes' defaults: the note quotes them
    about(g, (T2V_A14B_LOW, T2V_A14B_HIGH, UMT5, VAE21, HPS21), size=(520, 620), c=c)
    diffusion_model(g, "model", T2V_A14B_LOW, weight_dtype=KEEP_FILE_DTYPE, title="Low-noise expert (trained)")
    diffusion_model(g, "model_high", T2V_A14B_HIGH, weight_dtype=KEEP_FILE_DTYPE,
                    title="High-noise expert (rollout only)")
    text_encoder_and_vae(g, VAE21)
    g.add("reward", "WanFlowLoadRewardModel", "models", 0, dict(reward=HPS21["name"], kind="HPS v2.1", dtype="fp32",
                                                               device="default"), models=[HPS21])
    trainer(g, "srpo", "WanFlowSRPOTraining", "WanFlowSRPOSettings", dict(  # everything else: the defaults
        prompts="\n".join(SRPO_PROMPTS), heldout_prompts="\n".join(SRPO_HELDOUT),
        output_name="wanflow/srpo_wan22_a14b_low_noise"), settings={},
        links=dict(model=("model", "model"), model_high_noise=("model_high", "model"), vae=("vae", "vae"),
                   text_encoder=("text_encoder", "text_encoder"), reward=("reward", "reward")))
    srpo_outputs(g)
    return g


def model_info() -> Graph:
    g = Graph("wanflow_model_info", "WanFlow: model info")
    about(g, (T2V_13B,), size=(420, 300))
    diffusion_model(g, "model", T2V_13B)
    g.add("info", "WanFlowModelInfo", "outputs", 0, links=dict(model=("model", "model")), size=(420, 260))
    return g


def vae_roundtrip() -> Graph:
    g = Graph("wanflow_vae_roundtrip", "WanFlow: VAE round trip")
    about(g, (VAE21,), size=(440, 360))
    g.add("vae", "WanFlowLoadVAE", "models", 0, dict(vae_name=VAE21["name"], dtype="auto"), models=[VAE21])
    g.add("image", "EmptyImage", "data", 0, dict(width=832, height=480, batch_size=17, color=0x336699))
    g.add("encode", "WanFlowVAEEncode", "data", 1, dict(tile_size=0), links=dict(pixels=("image", "IMAGE"),
                                                                                 vae=("vae", "vae")))
    g.add("decode", "WanFlowVAEDecode", "outputs", 0, dict(tile_size=0), links=dict(samples=("encode", "latent"),
                                                                                    vae=("vae", "vae")))
    g.add("save", "SaveImage", "outputs", 1, dict(filename_prefix="wanflow/vae_roundtrip"),
          links=dict(images=("decode", "images")), size=(400, 360))
    return g


WORKFLOWS = [t2v_wan21_13b, i2v_wan21_14b, ti2v_wan22_5b, t2v_wan22_a14b, train_lora_wan21_13b, t2v_wan21_13b_lora,
             demo_train, srpo_demo, srpo_wan22_a14b_low_noise, model_info, vae_roundtrip]
