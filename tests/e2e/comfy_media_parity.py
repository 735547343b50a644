"""Run inside ComfyUI's own Python (not pytest): our VAE vs ComfyUI's native Wan VAE, and our
text / CLIP-vision encoders under the transformers version ComfyUI installs.

Usage: python comfy_media_parity.py COMFYUI_DIR WAN_CORE_PARENT VAE_FILE UMT5_FILE CLIP_FILE

VAE_FILE must have the released Wan2.1 widths (ComfyUI builds its VAE with dim 96). Prints one
line `RESULT {json}` with:
  vae_decode_diff / vae_encode_diff: max |native - ours| on frames in 0..1 / raw latents (fp32)
  vae_decode_absmax / vae_encode_absmax: scale of those outputs
  text_diff: max |transformers' UMT5EncoderModel - our WanTextEncoder| on a padded batch
  clip_diff: max |transformers' CLIPVisionModel hidden_states[-2] - our WanClipVision|
  transformers: the version in ComfyUI's venv
"""
import json
import sys

comfy_dir, wan_core_parent, vae_file, umt5_file, clip_file = sys.argv[1:6]
sys.path.insert(0, comfy_dir)
sys.path.insert(1, wan_core_parent)

import comfy.cli_args  # noqa: E402

comfy.cli_args.args.cpu = True  # before comfy.model_management is imported

import comfy.sd  # noqa: E402
import comfy.utils  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402

import wan_core  # noqa: E402
from wan_core.models.clip_vision import official_preprocess  # noqa: E402

assert wan_core.__file__.startswith(wan_core_parent), wan_core.__file__
result = {"transformers": transformers.__version__}
gen = torch.Generator().manual_seed(0)

# ---- VAE: native comfy.sd.VAE and ours on the same file, fp32
native = comfy.sd.VAE(sd=comfy.utils.load_torch_file(vae_file), dtype=torch.float32)
ours = wan_core.load_vae(vae_file, dtype=torch.float32)
latent = torch.randn(1, 16, 2, 6, 8, generator=gen)
theirs_frames = native.decode(latent)  # [1, F, H, W, 3] in 0..1
theirs_frames = theirs_frames.reshape(-1, *theirs_frames.shape[-3:])
our_frames = ((ours.decode(latent, normalized=False) + 1) / 2).clamp(0, 1)[0].permute(1, 2, 3, 0)
result["vae_decode_diff"] = (theirs_frames.float() - our_frames).abs().max().item()
result["vae_decode_absmax"] = our_frames.abs().max().item()
pixels = torch.rand(5, 48, 64, 3, generator=gen)
theirs_latent = native.encode(pixels)
our_latent = ours.encode(pixels.permute(3, 0, 1, 2).unsqueeze(0) * 2 - 1, normalized=False)
result["vae_encode_diff"] = (theirs_latent.float() - our_latent).abs().max().item()
result["vae_encode_absmax"] = our_latent.abs().max().item()

# ---- text encoder: ours vs transformers' UMT5EncoderModel on the same weights
encoder = wan_core.load_text_encoder(umt5_file, dtype=torch.float32)
ids, mask = encoder.tokenize(["a red fox in the snow", "hi"], max_length=16)
reference = transformers.UMT5EncoderModel(encoder.model.config).eval()
reference.load_state_dict(encoder.model.state_dict(), strict=False)
with torch.no_grad():
    expected = reference(input_ids=ids, attention_mask=mask).last_hidden_state
got = encoder(ids, mask)
result["text_diff"] = max((got[i, : int(mask[i].sum())] - expected[i, : int(mask[i].sum())]).abs().max().item()
                          for i in range(2))

# ---- CLIP vision: ours vs transformers' CLIPVisionModel hidden_states[-2]
clip = wan_core.load_clip_vision(clip_file, dtype=torch.float32)
images = torch.rand(2, 3, 40, 56, generator=gen) * 2 - 1
with torch.no_grad():
    ref = transformers.CLIPVisionModel(clip.config).eval()
    missing, _ = ref.load_state_dict({"vision_model." + k if not k.startswith("vision_model.") else k: v
                                      for k, v in clip.vision.state_dict().items()}, strict=False)
    assert not [m for m in missing if "position_ids" not in m], missing
    hidden = ref(pixel_values=official_preprocess(images, clip.image_size), output_hidden_states=True).hidden_states[-2]
result["clip_diff"] = (clip.encode(images) - hidden).abs().max().item()
print("RESULT " + json.dumps(result))
