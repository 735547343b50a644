"""Training-data nodes: a media folder -> WANFLOW_DATASET, and a dataset + VAE + text encoder -> WANFLOW_LATENTS.

The folder is read from ComfyUI's input directory (outside ComfyUI: `$WANFLOW_INPUT_DIR`, default
`./input`); the latent cache is written under the output directory in `wanflow_cache/<folder>`
(outside ComfyUI: `$WANFLOW_OUTPUT_DIR`, default `./output`). All the work is in wan_core.dataset and
wan_core.latent_cache.
"""
from __future__ import annotations

import hashlib
import re
from pathlib import Path

from ..wan_core.training.dataset import SHORT_VIDEO_POLICIES, MediaDataset, scan_media
from ..wan_core.training.latent_cache import build_latent_cache
from .comfy_bridge import free_memory_bytes, input_root, output_root, progress_callback

CACHE_FOLDER = "wanflow_cache"
FOLDER_TOOLTIP = ("Folder of training videos and images, relative to ComfyUI's input directory (e.g. 'training/cats'). "
                  "Each file needs a same-name .txt caption (clip.mp4 + clip.txt); subfolders are included, and a "
                  "subfolder named N_name (kohya style) repeats its files N times.")
BUCKETS_TOOLTIP = ("Resolutions as WIDTHxHEIGHTxFRAMES, comma separated, e.g. '832x480x81, 480x832x81, 624x624x1'. "
                   "Each file goes to the bucket nearest its aspect ratio, is scaled to cover it and center-cropped. "
                   "Frames must be 1 + 4k; width and height multiples of 16 (32 for Wan2.2 TI2V-5B).")
FPS_TOOLTIP = "Frame rate the clips are sampled at: 16 for Wan2.1 and Wan2.2 A14B, 24 for Wan2.2 TI2V-5B."
REPEATS_TOOLTIP = "How many times every file is seen per epoch (multiplies kohya-style N_name folder repeats)."
CAPTION_TOOLTIP = "Caption for files without a .txt file. Empty: such files are skipped (and listed in the summary)."
SHORT_TOOLTIP = ("Videos shorter than their bucket's frame count: 'shorten' uses the longest 1 + 4k frames they have "
                 "(listed in the summary), 'skip' leaves them out.")


def dataset_folder(folder: str) -> Path:
    """The folder inside the input directory; a clear error for paths leading out of it."""
    root = input_root().resolve()
    text = folder.strip() if isinstance(folder, str) else ""
    if not text or "\0" in text:
        raise ValueError(f"WanFlow Video Dataset: folder must be a folder inside the input directory {root}, "
                         f"e.g. 'training/cats'; found {folder!r}")
    path = (root / text).resolve()
    if path != root and root not in path.parents:
        raise ValueError(f"WanFlow Video Dataset: folder must stay inside the input directory {root}; "
                         f"{folder!r} resolves to {path}")
    if not path.is_dir():
        raise ValueError(f"WanFlow Video Dataset: no folder {text!r} in the input directory {root}")
    return path


def cache_dir_for(dataset: MediaDataset) -> Path:
    """output/wanflow_cache/<the dataset folder, relative to the input directory, as one name>."""
    root = Path(dataset.root)
    try:
        label = root.relative_to(input_root().resolve()).as_posix()
    except ValueError:
        label = root.name
    name = re.sub(r"[^\w.-]+", "_", label).strip("._") or "dataset"
    return output_root() / CACHE_FOLDER / name


class WanFlowVideoDataset:
    """Scan a folder of captioned videos and images into training clips."""

    DESCRIPTION = ("Scans a folder of videos (mp4, webm, mov, mkv, gif) and images (png, jpg, webp) with same-name .txt "
                   "captions. Videos are sampled at the given frame rate from their first frame; every file goes to "
                   "the resolution bucket nearest its aspect ratio. Files that cannot be used (no caption, unreadable, "
                   "empty, too short with 'skip') are left out and listed in the summary with the reason.")
    CATEGORY = "WanFlow/training"
    FUNCTION = "scan"
    RETURN_TYPES = ("WANFLOW_DATASET", "STRING")
    RETURN_NAMES = ("dataset", "summary")
    OUTPUT_TOOLTIPS = ("The scanned files (decoded when the latents are cached).",
                       "Files per bucket, adjustments, and every skipped file with the reason.")

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "folder": ("STRING", {"default": "training", "tooltip": FOLDER_TOOLTIP}),
                "buckets": ("STRING", {"default": "832x480x81", "tooltip": BUCKETS_TOOLTIP}),
                "fps": ("FLOAT", {"default": 16.0, "min": 1.0, "max": 120.0, "step": 1.0, "tooltip": FPS_TOOLTIP}),
                "repeats": ("INT", {"default": 1, "min": 1, "max": 10000, "tooltip": REPEATS_TOOLTIP}),
                "default_caption": ("STRING", {"default": "", "multiline": True, "tooltip": CAPTION_TOOLTIP}),
                "short_videos": (list(SHORT_VIDEO_POLICIES), {"default": "shorten", "tooltip": SHORT_TOOLTIP}),
            }
        }

    @classmethod
    def IS_CHANGED(cls, folder, **_):
        """Scan again when a file in the folder is added, removed or modified."""
        try:
            root = dataset_folder(folder)
        except ValueError:
            return ""  # scan() reports the error
        h = hashlib.sha256()
        for path in sorted(root.rglob("*")):
            if path.is_file():
                stat = path.stat()
                h.update(f"{path.relative_to(root)}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
        return h.hexdigest()

    def scan(self, folder, buckets="832x480x81", fps=16.0, repeats=1, default_caption="", short_videos="shorten"):
        dataset = scan_media(dataset_folder(folder), buckets, fps=float(fps), repeats=int(repeats),
                             default_caption=default_caption if default_caption.strip() else None,
                             short_videos=short_videos)
        return dataset, dataset.summary()


class WanFlowCacheLatents:
    """Encode a dataset's clips and captions once, into a reusable cache for training."""

    DESCRIPTION = ("Encodes every clip with the VAE and every caption with the text encoder and stores them in the "
                   "output folder (wanflow_cache/<dataset folder>). Files already encoded with the same models and "
                   "settings are reused, so a second run is instant; a changed caption or file is encoded again. "
                   "Image conditioning (I2V models) also stores the first-frame conditioning and, with a CLIP vision "
                   "model (Wan2.1 I2V), its CLIP features.")
    CATEGORY = "WanFlow/training"
    FUNCTION = "cache"
    RETURN_TYPES = ("WANFLOW_LATENTS", "STRING")
    RETURN_NAMES = ("latents", "summary")
    OUTPUT_TOOLTIPS = ("The cached latents and text embeddings, for the trainer.",
                       "How many files were encoded or reused, and every skipped file with the reason.")

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "dataset": ("WANFLOW_DATASET", {"tooltip": "From WanFlow Video Dataset."}),
                "vae": ("WANFLOW_VAE", {"tooltip": "The VAE of the model to train (Wan2.1 VAE, or Wan2.2 VAE for TI2V-5B)."}),
                "text_encoder": ("WANFLOW_TEXT_ENCODER", {"tooltip": "The UMT5 text encoder."}),
                "image_conditioning": ("BOOLEAN", {"default": False, "tooltip": (
                    "For image-to-video models (Wan2.1 I2V / FLF2V, Wan2.2 I2V-A14B): also cache the first-frame "
                    "conditioning. On automatically when a CLIP vision model is connected.")}),
            },
            "optional": {
                "clip_vision": ("WANFLOW_CLIP_VISION", {"tooltip": "Wan2.1 I2V: CLIP ViT-H, for the first frame's features."}),
            },
        }

    def cache(self, dataset, vae, text_encoder, image_conditioning=False, clip_vision=None):
        if not isinstance(dataset, MediaDataset):
            raise ValueError(f"WanFlow Cache Latents: dataset must come from WanFlow Video Dataset, found "
                             f"{type(dataset).__name__}")
        vae_module = vae.load()
        encoder = text_encoder.load()
        clip = clip_vision.load() if clip_vision is not None else None
        latents = build_latent_cache(dataset, vae_module, encoder, cache_dir_for(dataset), clip_vision=clip,
                                     image_conditioning=bool(image_conditioning) or clip is not None,
                                     callback=progress_callback(), memory_budget=free_memory_bytes(vae_module.device))
        return latents, latents.summary()


NODE_CLASS_MAPPINGS = {
    "WanFlowVideoDataset": WanFlowVideoDataset,
    "WanFlowCacheLatents": WanFlowCacheLatents,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "WanFlowVideoDataset": "WanFlow Video Dataset",
    "WanFlowCacheLatents": "WanFlow Cache Latents",
}
