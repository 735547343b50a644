"""Training media: a folder of videos and images with `.txt` captions -> clips in resolution buckets.

`scan_media(folder, buckets, fps=16)` walks a folder (recursively) and describes every usable file as a
`MediaItem`; `MediaItem.load()` decodes it into the clip a trainer encodes: [3, F, H, W] in [-1, 1].

* Captions: `clip.mp4` goes with `clip.txt` (UTF-8). Without one the file is skipped ("no caption file
  clip.txt") unless `default_caption` is given. An empty caption file is kept on purpose as an empty
  caption (it trains the unconditional case, like caption dropout) and listed in `notes`.
* Frames: a video is resampled to `fps` by picking, for target frame i (time i/fps), the source frame
  nearest to that time (source frame j is at j/source_fps, source_fps from the file's metadata). Clips
  start at the first frame. Frame counts are 1 + 4k, as the VAE needs. An image is a 1-frame clip.
* Buckets: (width, height, frames) triples, e.g. parse_buckets("832x480x81, 480x832x81"). A file goes to
  the bucket whose aspect ratio is nearest to its own (log-ratio distance; ties to the one listed first),
  and among buckets of that aspect to the one with the most frames it can fill. Aspect comes first so a
  landscape clip never turns into a square image. When the file is shorter than every bucket of its
  aspect, a video is shortened to the longest 1 + 4k frames it has (listed in `notes`) or, with
  short_videos="skip", skipped; an image becomes a 1-frame clip of that bucket's size.
* Resizing: the frame is scaled (bicubic, antialiased when shrinking) just enough to cover the bucket,
  then center-cropped. Width and height must be multiples of 16 (Wan2.1: VAE stride 8 x DiT patch 2;
  the latent cache checks 32 for Wan2.2).
* Repeats: `repeats` multiplies the whole dataset; kohya-style folders `N_name` directly under the root
  repeat their files N times more (`0_name` leaves a folder out).
* Bad input never stops a scan: unreadable, corrupt, empty or frameless files and missing captions are
  recorded in `skipped` as (path, reason); only a scan with no usable file at all raises DatasetError.

Videos are read with PyAV (`av`, which ComfyUI requires) directly, images with PIL. (imageio's pyav plugin
was the first choice, but it runs gc.collect() every time it closes a file: 0.7 s per call measured in a
process holding models, i.e. minutes for a few hundred clips.)
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F

from ..models.vae import SIZE_MULTIPLE  # 16: Wan2.1 VAE stride 8 x DiT patch 2; the latent cache checks 32 for Wan2.2

VIDEO_EXTENSIONS = (".mp4", ".webm", ".mov", ".mkv", ".gif")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp")
SHORT_VIDEO_POLICIES = ("shorten", "skip")
KOHYA_FOLDER = re.compile(r"^(\d+)_(.+)$")


class DatasetError(ValueError):
    """A dataset that cannot be used at all (bad settings, or no usable file)."""


class MediaError(Exception):
    """One file that cannot be used; the message is the reason recorded in `skipped`."""


# --------------------------------------------------------------------------------------------
# Buckets
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Bucket:
    width: int
    height: int
    frames: int

    def __post_init__(self):
        if min(self.width, self.height, self.frames) < 1 or (self.frames - 1) % 4:
            raise DatasetError(f"bucket {self}: expected width, height >= 1 and frames = 1 + 4k (1, 5, ..., 81)")

    @property
    def aspect(self) -> float:
        return self.width / self.height

    def __str__(self) -> str:
        return f"{self.width}x{self.height}x{self.frames}"


def check_bucket_sizes(buckets, multiple: int, why: str = "") -> None:
    """A clear error when a bucket's width or height is not a multiple of `multiple`."""
    bad = [str(b) for b in buckets if b.width % multiple or b.height % multiple]
    if bad:
        raise DatasetError(f"bucket width and height must be multiples of {multiple}{why}; found {', '.join(bad)}")


def parse_buckets(text: str, multiple: int = SIZE_MULTIPLE) -> list[Bucket]:
    """"832x480x81, 480x832x81, 512x512x1" -> Buckets (width x height x frames; frames may be left out = 1)."""
    if not isinstance(text, str) or not text.strip():
        raise DatasetError(f"buckets: expected 'WIDTHxHEIGHTxFRAMES' entries separated by commas, found {text!r}")
    buckets = []
    for part in re.split(r"[,;\n]+", text):
        part = part.strip()
        if not part:
            continue
        m = re.fullmatch(r"(\d+)\s*[x*×]\s*(\d+)(?:\s*[x*×]\s*(\d+))?", part, flags=re.IGNORECASE)
        if m is None:
            raise DatasetError(f"buckets: cannot read {part!r}; expected WIDTHxHEIGHTxFRAMES such as 832x480x81")
        width, height, frames = int(m.group(1)), int(m.group(2)), int(m.group(3) or 1)
        buckets.append(Bucket(width, height, frames))
    if len(set(buckets)) != len(buckets):
        raise DatasetError(f"buckets: {text!r} lists a bucket twice")
    check_bucket_sizes(buckets, multiple, " (VAE stride x DiT patch size)")
    return buckets


def choose_bucket(width: int, height: int, available_frames: int, buckets) -> tuple[Bucket, bool]:
    """-> (bucket of the nearest aspect ratio with the most frames <= available_frames, True), or
    (the shortest bucket of that aspect, False) when the file fills none of them."""
    distance = [abs(math.log(b.aspect) - math.log(width / height)) for b in buckets]
    nearest = [b for b, d in zip(buckets, distance) if d <= min(distance) + 1e-9]
    fitting = [b for b in nearest if b.frames <= available_frames]
    if fitting:
        return max(fitting, key=lambda b: b.frames), True  # max keeps the first of equals
    return min(nearest, key=lambda b: b.frames), False


# --------------------------------------------------------------------------------------------
# Frames
# --------------------------------------------------------------------------------------------


def _nearest(x: float) -> int:
    return math.floor(x + 0.5 + 1e-9)  # halves round up (no banker's rounding); 1e-9 absorbs float error


def frame_indices(count: int, source_fps: float, fps: float) -> list[int]:
    """Source frames for target frames 0..count-1: the one nearest to time i / fps."""
    return [_nearest(i * source_fps / fps) for i in range(count)]


def frames_available(source_frames: int, source_fps: float, fps: float) -> int:
    """How many target frames at `fps` a video of `source_frames` frames provides."""
    if source_frames < 1:
        return 0
    ratio = source_fps / fps
    n = max(1, math.floor((source_frames - 0.5) / ratio) + 1)
    while n > 1 and _nearest((n - 1) * ratio) > source_frames - 1:
        n -= 1
    while _nearest(n * ratio) <= source_frames - 1:
        n += 1
    return n


def longest_valid_frames(n: int) -> int:
    """The longest 1 + 4k frame count <= n (n >= 1)."""
    return 1 + 4 * ((n - 1) // 4)


def fit_to_bucket(frames: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """uint8 frames [N, h, w, 3] -> [3, N, height, width] in [-1, 1]: scaled to cover the bucket
    (bicubic, antialiased when shrinking), then center-cropped."""
    h, w = frames.shape[1:3]
    scale = max(width / w, height / h)
    new_w, new_h = max(width, round(w * scale)), max(height, round(h * scale))
    x = frames.permute(0, 3, 1, 2).float() / 255
    if (new_h, new_w) != (h, w):
        x = F.interpolate(x, size=(new_h, new_w), mode="bicubic", align_corners=False, antialias=True)
    top, left = (new_h - height) // 2, (new_w - width) // 2
    x = x[:, :, top:top + height, left:left + width]
    return (x * 2 - 1).clamp_(-1, 1).permute(1, 0, 2, 3).contiguous()


def read_image(path: Path) -> torch.Tensor:
    """An image file -> uint8 [h, w, 3] (EXIF rotation applied, alpha dropped)."""
    from PIL import Image, ImageOps

    try:
        with Image.open(path) as image:
            image.load()
            rgb = ImageOps.exif_transpose(image).convert("RGB")
    except Exception as exc:  # PIL raises many types for corrupt or truncated files
        raise MediaError(f"cannot read the image ({type(exc).__name__}: {exc})") from None
    return torch.frombuffer(bytearray(rgb.tobytes()), dtype=torch.uint8).view(rgb.height, rgb.width, 3)


def _open_video(path: Path):
    """-> (container, its first video stream) via PyAV; MediaError when the file is no readable video."""
    import av

    try:
        container = av.open(str(path))
    except Exception as exc:  # av.error.* for unknown formats, garbage, truncated headers
        raise MediaError(f"cannot read the video ({type(exc).__name__}: {exc})") from None
    if not container.streams.video:
        container.close()
        raise MediaError("no video stream in the file")
    stream = container.streams.video[0]
    stream.thread_type = "AUTO"
    return container, stream


def probe_video(path: Path) -> tuple[int, float, int, int]:
    """-> (frame count, frames per second, width, height) from the file's metadata; the frames are
    counted by decoding when the container does not store their number (webm, mkv)."""
    container, stream = _open_video(path)
    with container:
        fps = float(stream.guessed_rate or 0)
        width, height, count = stream.codec_context.width, stream.codec_context.height, stream.frames
        if count <= 0:
            count = 0
            try:
                for _ in container.decode(stream):
                    count += 1
            except Exception as exc:
                raise MediaError(f"decoding failed after {count} frames ({type(exc).__name__}: {exc})") from None
    if count == 0:
        raise MediaError("no video frames")
    if not math.isfinite(fps) or fps <= 0:
        raise MediaError(f"no frame rate in the file's metadata (found {fps!r})")
    return count, fps, width, height


def read_video_frames(path: Path, indices, width: int, height: int, source_frames: int | None = None) -> torch.Tensor:
    """Decode the given source frames (in any order, repeats allowed) and fit each to the bucket as it
    comes, so only the output is kept: -> [3, len(indices), height, width] in [-1, 1]."""
    wanted: dict[int, list[int]] = {}
    for position, index in enumerate(indices):
        wanted.setdefault(index, []).append(position)
    out = torch.empty(3, len(indices), height, width)
    last, decoded = max(wanted), 0
    container, stream = _open_video(path)
    with container:
        try:
            for index, frame in enumerate(container.decode(stream)):
                decoded = index + 1
                if index in wanted:
                    rgb = torch.from_numpy(frame.to_ndarray(format="rgb24"))
                    fitted = fit_to_bucket(rgb[None], width, height)
                    for position in wanted[index]:
                        out[:, position] = fitted[:, 0]
                if index >= last:
                    return out
        except Exception as exc:
            raise MediaError(f"decoding failed at frame {decoded} ({type(exc).__name__}: {exc})") from None
    header = f" (its metadata says {source_frames})" if source_frames else ""
    raise MediaError(f"the video ended after {decoded} frames but frame {last} is needed{header}")


# --------------------------------------------------------------------------------------------
# Items and the dataset
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MediaItem:
    """One usable file: what to read, how, and which bucket it fills."""

    path: Path
    caption: str
    bucket: Bucket              # the clip's size and frame count
    frame_indices: tuple        # source frames picked, one per clip frame ((0,) for an image)
    fps: float | None           # target frame rate (None for images)
    source_fps: float | None
    source_frames: int
    repeats: int = 1

    @property
    def is_image(self) -> bool:
        return self.fps is None

    def load(self) -> torch.Tensor:
        """The clip [3, F, H, W] in [-1, 1]; MediaError when the file cannot be decoded."""
        b = self.bucket
        if self.is_image:
            return fit_to_bucket(read_image(self.path)[None], b.width, b.height)
        return read_video_frames(self.path, self.frame_indices, b.width, b.height, self.source_frames)


class MediaDataset:
    """Scanned media (what travels through a WANFLOW_DATASET socket). `items` holds each file once with
    its repeat count; len() and [i] count repeats. [i] -> {"video", "caption", "source", "bucket"}."""

    def __init__(self, root: Path, items: list[MediaItem], skipped: list, notes: list, fps: float, buckets: list):
        self.root = root
        self.items = items
        self.skipped = skipped   # (file, reason) for every file left out
        self.notes = notes       # (file, what was adjusted) for files used with a change
        self.fps = fps
        self.buckets = buckets
        self._order = [k for k, item in enumerate(items) for _ in range(item.repeats)]

    def __len__(self) -> int:
        return len(self._order)

    def __getitem__(self, i: int) -> dict:
        item = self.items[self._order[i]]
        return {"video": item.load(), "caption": item.caption, "source": str(item.path), "bucket": item.bucket}

    def item_of(self, i: int) -> MediaItem:
        return self.items[self._order[i]]

    def _name(self, path) -> str:
        try:
            return str(Path(path).relative_to(self.root))
        except ValueError:
            return str(path)

    def summary(self) -> str:
        per_bucket: dict[str, int] = {}
        for item in self.items:
            per_bucket[str(item.bucket)] = per_bucket.get(str(item.bucket), 0) + 1
        lines = [f"{len(self.items)} files ({len(self)} clips with repeats) from {self.root} at {self.fps:g} fps",
                 "buckets: " + ", ".join(f"{k}: {v}" for k, v in sorted(per_bucket.items()))]
        if self.notes:
            lines.append(f"notes ({len(self.notes)}):")
            lines += [f"  {self._name(p)}: {why}" for p, why in self.notes]
        lines.append(f"skipped {len(self.skipped)} files" + (":" if self.skipped else ""))
        lines += [f"  {self._name(p)}: {why}" for p, why in self.skipped]
        return "\n".join(lines)


def read_caption(media: Path, default_caption: str | None) -> tuple[str, str | None]:
    """-> (caption, note or None) from the same-name .txt file; MediaError when there is none to use."""
    txt = media.with_suffix(".txt")
    if not txt.is_file():
        if default_caption is None:
            raise MediaError(f"no caption file {txt.name}")
        return default_caption, None
    try:
        caption = txt.read_text(encoding="utf-8-sig").strip()
    except UnicodeDecodeError:
        raise MediaError(f"caption file {txt.name} is not UTF-8 text") from None
    except OSError as exc:
        raise MediaError(f"cannot read caption file {txt.name} ({exc})") from None
    return caption, (f"empty caption file {txt.name}: trained with an empty caption" if not caption else None)


def folder_repeats(path: Path, root: Path) -> int:
    """kohya-style repeats: the N of an `N_name` folder directly under the root (1 otherwise)."""
    parts = path.relative_to(root).parts
    m = KOHYA_FOLDER.match(parts[0]) if len(parts) > 1 else None
    return int(m.group(1)) if m else 1


def _media_files(root: Path):
    """Files under root in a stable order, without hidden files/folders and caption files."""
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).parts
        if any(p.startswith(".") for p in rel) or not path.is_file() or path.suffix.lower() == ".txt":
            continue
        yield path


def _describe(path: Path, buckets, fps: float, default_caption, short_videos: str, notes: list) -> MediaItem:
    """One file -> MediaItem (notes appended), or MediaError with the reason to skip it."""
    suffix = path.suffix.lower()
    if suffix not in VIDEO_EXTENSIONS + IMAGE_EXTENSIONS:
        raise MediaError(f"unsupported file type {suffix or '(none)'} (videos: {' '.join(VIDEO_EXTENSIONS)}; "
                         f"images: {' '.join(IMAGE_EXTENSIONS)})")
    if path.stat().st_size == 0:
        raise MediaError("empty file (0 bytes)")
    caption, caption_note = read_caption(path, default_caption)
    if suffix in IMAGE_EXTENSIONS:
        h, w = read_image(path).shape[:2]
        bucket, _ = choose_bucket(w, h, 1, buckets)
        item = MediaItem(path, caption, Bucket(bucket.width, bucket.height, 1), (0,), None, None, 1)
    else:
        count, source_fps, w, h = probe_video(path)
        available = frames_available(count, source_fps, fps)
        bucket, fills = choose_bucket(w, h, available, buckets)
        if not fills:
            have = f"{count} frames at {source_fps:g} fps = {available} at {fps:g} fps"
            if short_videos == "skip":
                raise MediaError(f"too short for bucket {bucket}: {have}")
            frames = longest_valid_frames(available)
            notes.append((path, f"shortened to {frames} frames for bucket {bucket} ({have})"))
            bucket = Bucket(bucket.width, bucket.height, frames)
        indices = tuple(frame_indices(bucket.frames, source_fps, fps))
        item = MediaItem(path, caption, bucket, indices, float(fps), source_fps, count)
    if caption_note:
        notes.append((path, caption_note))
    return item


def scan_media(folder, buckets, *, fps: float = 16.0, repeats: int = 1, default_caption: str | None = None,
               short_videos: str = "shorten") -> MediaDataset:
    """Scan `folder` recursively for captioned videos and images (see the module docstring).

    buckets: a list of Bucket / (width, height, frames), or a string for parse_buckets.
    default_caption: caption for files without a .txt (None = skip them).
    short_videos: "shorten" (use the longest 1 + 4k frames the video has) or "skip"."""
    root = Path(folder)
    if not root.is_dir():
        raise DatasetError(f"dataset folder {root} does not exist or is not a folder")
    buckets = parse_buckets(buckets) if isinstance(buckets, str) else [
        b if isinstance(b, Bucket) else Bucket(*b) for b in buckets]
    if not buckets:
        raise DatasetError("buckets: expected at least one (width, height, frames)")
    check_bucket_sizes(buckets, SIZE_MULTIPLE, " (VAE stride x DiT patch size)")
    if not (isinstance(fps, (int, float)) and math.isfinite(fps) and fps > 0):
        raise DatasetError(f"fps must be a positive number, found {fps!r}")
    if not isinstance(repeats, int) or repeats < 1:
        raise DatasetError(f"repeats must be an integer >= 1, found {repeats!r}")
    if short_videos not in SHORT_VIDEO_POLICIES:
        raise DatasetError(f"short_videos must be one of {SHORT_VIDEO_POLICIES}, found {short_videos!r}")

    items, skipped, notes = [], [], []
    for path in _media_files(root):
        extra = folder_repeats(path, root)
        if extra == 0:
            skipped.append((path, f"in folder {path.relative_to(root).parts[0]} (0 repeats)"))
            continue
        try:
            item = _describe(path, buckets, fps, default_caption, short_videos, notes)
        except MediaError as exc:
            skipped.append((path, str(exc)))
            continue
        except OSError as exc:  # e.g. permission denied, a file vanishing during the scan
            skipped.append((path, f"cannot read ({exc})"))
            continue
        items.append(replace(item, repeats=repeats * extra))
    if not items:
        reasons = "\n".join(f"  {p}: {why}" for p, why in skipped) or "  (no files at all)"
        raise DatasetError(f"no usable media in {root} (videos {' '.join(VIDEO_EXTENSIONS)}, images "
                           f"{' '.join(IMAGE_EXTENSIONS)}, each with a same-name .txt caption):\n{reasons}")
    return MediaDataset(root, items, [(str(p), why) for p, why in skipped], [(str(p), why) for p, why in notes],
                        float(fps), buckets)
