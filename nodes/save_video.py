"""Save node: an IMAGE batch (the frames of a clip) -> an .mp4 (H.264) or .webm (VP9) file.

Encoding goes through PyAV (`av`, which ComfyUI itself requires) with a constant-quality CRF. The
file lands in ComfyUI's output folder, named like ComfyUI's own save nodes (`<prefix>_00001_.mp4`);
outside ComfyUI the output folder is `$WANFLOW_OUTPUT_DIR` (default `./output`). Files are written
under a temporary name and renamed when complete, so an interrupted save leaves no broken video.
"""
from __future__ import annotations

import os
import re
import time
import uuid
from fractions import Fraction
from pathlib import Path, PurePath

import torch

from .comfy_bridge import _comfy, fallback_output_dir, progress_callback

# format -> (container, encoder, extra encoder options); both encode yuv420p, which browsers play
FORMATS = {
    "mp4": ("mp4", "libx264", {}),
    # VP9's CRF applies only in constant-quality mode (no bitrate target); row-mt uses the CPU cores
    "webm": ("webm", "libvpx-vp9", {"b": "0", "row-mt": "1"}),
}
FPS_TOOLTIP = "Frames per second: 16 for Wan2.1 and the Wan2.2 A14B models, 24 for Wan2.2 TI2V-5B."
PREFIX_TOOLTIP = ("File name prefix, relative to the output folder; a folder part makes a subfolder. A counter is "
                  "appended (video_00001_.mp4, video_00002_.mp4, ...), so files are never overwritten.")
FORMAT_TOOLTIP = "mp4 = H.264 (plays everywhere), webm = VP9 (smaller files, slower to encode)."
QUALITY_TOOLTIP = ("Constant rate factor (CRF): lower = better quality and larger files. 0 is (near) lossless, "
                   "17-23 looks good for most clips, above 30 shows compression artifacts.")


def _fill_placeholders(prefix: str, width: int, height: int) -> str:
    """%width%, %height%, %year%, %month%, %day%, %hour%, %minute%, %second% as in ComfyUI's save nodes."""
    if "%" not in prefix:
        return prefix
    now = time.localtime()
    values = {"width": width, "height": height, "year": now.tm_year, "month": f"{now.tm_mon:02}",
              "day": f"{now.tm_mday:02}", "hour": f"{now.tm_hour:02}", "minute": f"{now.tm_min:02}",
              "second": f"{now.tm_sec:02}"}
    for key, value in values.items():
        prefix = prefix.replace(f"%{key}%", str(value))
    return prefix


def _next_counter(folder: Path, filename: str) -> int:
    """1 + the highest counter among files named `<filename>_<digits>_...` in folder (1 when none)."""
    pattern = re.compile(re.escape(os.path.normcase(filename)) + r"_(\d+)_")
    found = [int(m.group(1)) for entry in os.listdir(folder)
             if (m := pattern.match(os.path.normcase(entry)))]
    return max(found, default=0) + 1


def fallback_save_path(filename_prefix: str, output_dir: Path, width: int, height: int):
    """Outside ComfyUI: (folder, filename, counter, subfolder) for a prefix like 'wanflow/video',
    confined to output_dir (relative paths only, no '..', no link leading out)."""
    prefix = _fill_placeholders(filename_prefix, width, height)
    expected = f"a relative path inside the output folder {output_dir} such as 'wanflow/video'"
    parts = PurePath(prefix.replace("\\", "/")).parts
    if (not prefix.strip() or "\0" in prefix or PurePath(prefix).is_absolute() or PurePath(prefix).anchor
            or prefix.startswith(("/", "\\")) or ".." in parts or not parts or prefix.endswith(("/", "\\"))):
        raise ValueError(f"WanFlow Save Video: filename_prefix must be {expected}, found {filename_prefix!r}")
    subfolder = "/".join(parts[:-1])
    filename = parts[-1]
    root = output_dir.resolve()
    folder = (root / subfolder).resolve()
    if folder != root and root not in folder.parents:  # e.g. a symlinked subfolder pointing elsewhere
        raise ValueError(f"WanFlow Save Video: filename_prefix must be {expected}, found {filename_prefix!r} "
                         f"(resolves to {folder})")
    folder.mkdir(parents=True, exist_ok=True)
    return folder, filename, _next_counter(folder, filename), subfolder


def _even_frames(images: torch.Tensor) -> torch.Tensor:
    """yuv420p needs even width and height: an odd size gets one more column/row, a copy of the last."""
    h, w = images.shape[1:3]
    if w % 2:
        images = torch.cat([images, images[:, :, -1:]], dim=2)
    if h % 2:
        images = torch.cat([images, images[:, -1:]], dim=1)
    return images


def encode_video(path: Path, images: torch.Tensor, fps: float, fmt: str, crf: int, callback=None) -> None:
    """Encode frames [N, H, W, 3] (0..1, even H and W) to `path`; `callback(done, total)` after each frame."""
    import av  # noqa: PLC0415 - imported when saving, so loading the pack stays light

    container_format, codec, extra = FORMATS[fmt]
    options = {"crf": str(int(crf)), **extra}
    container_options = {"movflags": "+faststart"} if container_format == "mp4" else {}
    with av.open(str(path), mode="w", format=container_format, options=container_options) as container:
        stream = container.add_stream(codec, rate=Fraction(fps).limit_denominator(1001), options=options)
        stream.width, stream.height = images.shape[2], images.shape[1]
        stream.pix_fmt = "yuv420p"
        total = images.shape[0]
        for i in range(total):
            rgb = (images[i, ..., :3].float().clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            frame.pts = i
            container.mux(stream.encode(frame))
            if callback is not None:
                callback(i + 1, total)
        container.mux(stream.encode())  # flush the encoder


def claim_name(folder: Path, filename: str, counter: int, fmt: str) -> str:
    """The first free `<filename>_<counter>_.<fmt>` from `counter` on, created empty in one atomic step
    (exclusive create), so two saves at the same moment never pick the same name."""
    while True:
        name = f"{filename}_{counter:05}_.{fmt}"
        try:
            os.close(os.open(folder / name, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
            return name
        except FileExistsError:
            counter += 1
        except OSError as e:
            raise ValueError(f"WanFlow Save Video: cannot create {folder / name}: {e.strerror} (check "
                             "filename_prefix: its name may be too long for the file system)") from e


class WanFlowSaveVideo:
    """Save frames (an IMAGE batch) as a video file in the output folder, and show it in the UI."""

    DESCRIPTION = ("Saves the frames (IMAGE, frames as the batch) as a video in ComfyUI's output folder: mp4 (H.264) "
                   "or webm (VP9), yuv420p, constant quality. Odd widths/heights get one extra column/row "
                   "repeating the edge, since yuv420p needs even sizes.")
    CATEGORY = "WanFlow/video"
    FUNCTION = "save"
    OUTPUT_NODE = True
    RETURN_TYPES = ()
    RETURN_NAMES = ()
    OUTPUT_TOOLTIPS = ()

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "images": ("IMAGE", {"tooltip": "Frames [N, H, W, 3] in 0..1, in playback order."}),
                "fps": ("FLOAT", {"default": 16.0, "min": 1.0, "max": 120.0, "step": 1.0, "tooltip": FPS_TOOLTIP}),
                "filename_prefix": ("STRING", {"default": "wanflow/video", "tooltip": PREFIX_TOOLTIP}),
                "format": (list(FORMATS), {"default": "mp4", "tooltip": FORMAT_TOOLTIP}),
                "quality": ("INT", {"default": 19, "min": 0, "max": 51, "step": 1, "tooltip": QUALITY_TOOLTIP}),
            }
        }

    def save(self, images, fps=16.0, filename_prefix="wanflow/video", format="mp4", quality=19):
        if not torch.is_tensor(images) or images.ndim != 4 or images.shape[-1] != 3 or images.shape[0] < 1 \
                or images.shape[1] < 1 or images.shape[2] < 1:
            found = tuple(images.shape) if torch.is_tensor(images) else type(images).__name__
            raise ValueError(f"WanFlow Save Video: expected IMAGE frames [N, H, W, 3] with N >= 1, found {found}")
        if format not in FORMATS:
            raise ValueError(f"WanFlow Save Video: format must be one of {list(FORMATS)}, found {format!r}")
        if not fps > 0:
            raise ValueError(f"WanFlow Save Video: fps must be > 0, found {fps}")
        if not 0 <= int(quality) <= 51:
            raise ValueError(f"WanFlow Save Video: quality (CRF) must be in 0..51, found {quality}")
        images = _even_frames(images)
        height, width = images.shape[1:3]

        folder_paths = _comfy("folder_paths")
        if folder_paths is not None:
            folder, filename, counter, subfolder, _ = folder_paths.get_save_image_path(
                filename_prefix, folder_paths.get_output_directory(), width, height)
            folder = Path(folder)
        else:
            folder, filename, counter, subfolder = fallback_save_path(filename_prefix, fallback_output_dir(), width, height)
        name = claim_name(folder, filename, counter, format)
        # the partial file's name is short: a final name the file system takes never fails on it
        partial = folder / f".wanflow-{uuid.uuid4().hex[:12]}.part"
        try:
            encode_video(partial, images, fps, format, quality, callback=progress_callback())
            os.replace(partial, folder / name)  # over our own empty placeholder
        except BaseException:  # interrupted or failed: remove the partial file and the claim, keep nothing broken
            partial.unlink(missing_ok=True)
            (folder / name).unlink(missing_ok=True)
            raise
        return {"ui": {"images": [{"filename": name, "subfolder": subfolder, "type": "output"}], "animated": (True,)}}


NODE_CLASS_MAPPINGS = {"WanFlowSaveVideo": WanFlowSaveVideo}
NODE_DISPLAY_NAME_MAPPINGS = {"WanFlowSaveVideo": "WanFlow Save Video"}
