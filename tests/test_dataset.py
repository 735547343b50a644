"""Training data: media folder scan (frames at a target fps, buckets, resize/crop, captions, skips,
repeats) and the latent cache (values equal direct encodes, reuse, invalidation, corrupt files, I2V y)."""
import inspect
import random
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from wan_core.generation.conditioning import clip_features, concat_y, image_condition
from wan_core.models.text_encoder import WanTextEncoder
from wan_core.models.tokenizer import SentencePieceTokenizer
from wan_core.testing.clip_vision import random_clip_vision
from wan_core.testing.text_encoder import random_umt5, tiny_spiece_model
from wan_core.testing.vae import random_vae
from wan_core.training.dataset import (
    Bucket,
    DatasetError,
    MediaError,
    choose_bucket,
    fit_to_bucket,
    frame_indices,
    frames_available,
    longest_valid_frames,
    parse_buckets,
    read_video_frames,
    scan_media,
)
from wan_core.training.latent_cache import CachedLatents, build_latent_cache, load_latent_cache, model_identity

LEVEL = 6  # frame i of a test video has grey level 6 * i in its top half
BUCKETS = "48x32x5, 32x48x5, 32x32x1"


# --------------------------------------------------------------------------------------------
# Generated media
# --------------------------------------------------------------------------------------------


def write_video(path, frames=40, fps=24, width=56, height=40, codec="libx264"):
    """Frame i: top half grey 6*i (readable after lossy coding), bottom half a gradient moving right."""
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"crf": "10"} if codec == "libx264" else {"crf": "10", "b": "0"}
        for i in range(frames):
            a = np.zeros((height, width, 3), np.uint8)
            a[: height // 2] = LEVEL * i
            a[height // 2:] = ((np.arange(width) * 4 + 8 * i) % 256)[None, :, None]
            frame = av.VideoFrame.from_ndarray(a, format="rgb24")
            frame.pts = i
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return path


def write_frameless_video(path):
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=24)
        stream.width, stream.height, stream.pix_fmt = 56, 40, "yuv420p"
        container.start_encoding()
        container.mux(stream.encode())
    return path


def write_image(path, width, height, seed=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return pixels


def caption(path, text):
    path.with_suffix(".txt").write_text(text, encoding="utf-8")


def levels(clip):
    """Frame numbers read back from the grey top rows of a clip [3, F, H, W] in [-1, 1]."""
    grey = (clip[:, :, :3].mean(dim=(0, 2, 3)) + 1) / 2 * 255
    return [round(v) for v in (grey / LEVEL).tolist()]


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    root = tmp_path_factory.mktemp("media")
    caption(write_video(root / "a.mp4"), "a cat walks on the grass")
    caption(write_video(root / "b.webm", codec="libvpx-vp9"), "a dog")
    write_image(root / "3_more" / "portrait.png", 40, 64)
    caption(root / "3_more" / "portrait.png", "a portrait")
    write_image(root / "3_more" / "square.jpg", 50, 48, seed=1)
    caption(root / "3_more" / "square.jpg", "  \n")  # empty caption: kept as ""
    caption(write_video(root / "short.mp4", frames=5), "too short")
    write_video(root / "nocap.mp4", frames=9)
    (root / "corrupt.mp4").write_bytes(bytes(range(256)) * 8)
    caption(root / "corrupt.mp4", "x")
    caption(write_frameless_video(root / "zero.mp4"), "x")
    (root / "empty.webm").write_bytes(b"")
    caption(root / "empty.webm", "x")
    png = root / "truncated.png"
    write_image(png, 32, 32)
    png.write_bytes(png.read_bytes()[:200])
    caption(png, "x")
    (root / "notes.md").write_text("not media")
    write_video(root / ".hidden" / "x.mp4", frames=5)  # hidden folders are ignored
    return root


def skip_reasons(ds):
    return {Path(p).name: why for p, why in ds.skipped}


# --------------------------------------------------------------------------------------------
# Frames
# --------------------------------------------------------------------------------------------


def test_frame_indices_pick_the_nearest_source_frame():
    assert frame_indices(5, 24, 8) == [0, 3, 6, 9, 12]
    assert frame_indices(5, 24, 16) == [0, 2, 3, 5, 6]  # 1.5 -> 2, 4.5 -> 5 (halves round up)
    assert frame_indices(4, 25, 30) == [0, 1, 2, 3]      # 0.83, 1.67, 2.5 -> 1, 2, 3
    assert frame_indices(3, 8, 16) == [0, 1, 1]          # a higher target rate repeats frames
    ntsc = 30000 / 1001
    assert frame_indices(3, ntsc, 16) == [0, 2, 4]       # 1.87, 3.75


def test_frames_available_matches_its_definition():
    assert frames_available(40, 24, 8) == 14 and frames_available(40, 24, 16) == 27
    assert frames_available(5, 24, 8) == 2 and frames_available(1, 30, 16) == 1 and frames_available(0, 24, 8) == 0
    rng = random.Random(0)
    for _ in range(300):
        n, src, fps = rng.randint(1, 200), rng.choice([8, 12, 15, 23.976, 24, 25, 29.97, 30, 60]), rng.choice([8, 16, 24, 30])
        m = frames_available(n, src, fps)
        picked = frame_indices(m + 1, src, fps)
        assert picked[m - 1] <= n - 1 < picked[m], (n, src, fps, m)
    assert [longest_valid_frames(n) for n in (1, 4, 5, 13, 14, 81, 84)] == [1, 1, 5, 13, 13, 81, 81]


@pytest.mark.parametrize("name", ["a.mp4", "b.webm"])
def test_decoded_frames_are_the_selected_ones(media, name):
    for fps in (8, 16, 24):
        indices = frame_indices(9, 24, fps)
        clip = read_video_frames(media / name, indices, 56, 40)  # the source size: no resampling
        assert clip.shape == (3, 9, 40, 56) and clip.dtype == torch.float32
        assert levels(clip) == indices, fps
    # any order and repeats
    assert levels(read_video_frames(media / name, [7, 2, 2, 0], 56, 40)) == [7, 2, 2, 0]
    with pytest.raises(MediaError, match="ended after 40 frames but frame 45 is needed"):
        read_video_frames(media / name, [0, 45], 56, 40)


# --------------------------------------------------------------------------------------------
# Buckets and resizing
# --------------------------------------------------------------------------------------------


def test_parse_buckets():
    assert parse_buckets("832x480x81, 480x832x81,512X512x1; 624*624") == [
        Bucket(832, 480, 81), Bucket(480, 832, 81), Bucket(512, 512, 1), Bucket(624, 624, 1)]
    with pytest.raises(DatasetError, match=r"multiples of 16.*840x480x81"):
        parse_buckets("840x480x81")
    with pytest.raises(DatasetError, match=r"multiples of 32.*848x480x81"):
        parse_buckets("848x480x81", multiple=32)
    with pytest.raises(DatasetError, match=r"frames = 1 \+ 4k"):
        parse_buckets("832x480x80")
    with pytest.raises(DatasetError, match="cannot read '832x480xfoo'"):
        parse_buckets("832x480xfoo")
    with pytest.raises(DatasetError, match="twice"):
        parse_buckets("32x32x1, 32x32x1")
    with pytest.raises(DatasetError, match="expected"):
        parse_buckets("  ")


def test_bucket_by_aspect_then_frames():
    buckets = parse_buckets("832x480x81, 832x480x33, 480x832x81, 512x512x1")
    assert choose_bucket(1920, 1080, 200, buckets) == (Bucket(832, 480, 81), True)
    assert choose_bucket(1920, 1080, 50, buckets) == (Bucket(832, 480, 33), True)  # the longest it can fill
    assert choose_bucket(1920, 1080, 20, buckets) == (Bucket(832, 480, 33), False)  # fills none: shortest
    assert choose_bucket(1080, 1920, 100, buckets) == (Bucket(480, 832, 81), True)
    assert choose_bucket(1000, 1100, 1, buckets) == (Bucket(512, 512, 1), True)
    # aspect first: a short landscape clip keeps its shape instead of becoming a square image
    assert choose_bucket(1920, 1080, 1, buckets)[0].width == 832
    # equal candidates: the one listed first
    assert choose_bucket(100, 100, 9, parse_buckets("64x64x5, 32x32x5"))[0] == Bucket(64, 64, 5)


def test_fit_to_bucket_crops_the_center_exactly():
    pixels = torch.randint(0, 256, (2, 32, 64, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    out = fit_to_bucket(pixels, 32, 32)  # covers at scale 1: a pure center crop
    expected = pixels[:, :, 16:48].permute(3, 0, 1, 2).float() / 255 * 2 - 1
    assert out.shape == (3, 2, 32, 32) and torch.allclose(out, expected, atol=1e-6)
    tall = fit_to_bucket(pixels.transpose(1, 2).contiguous(), 32, 32)
    assert torch.allclose(tall, expected.transpose(2, 3), atol=1e-6)


@pytest.mark.parametrize("size, bucket", [((70, 52), (48, 32)), ((20, 10), (48, 32)), ((33, 61), (32, 48))])
def test_fit_to_bucket_matches_pil(size, bucket):
    """Scale to cover, then center crop, against PIL's bicubic resize (antialiased when shrinking)."""
    w, h = size
    W, H = bucket
    pixels = write_image_array(w, h)
    scale = max(W / w, H / h)
    nw, nh = max(W, round(w * scale)), max(H, round(h * scale))
    left, top = (nw - W) // 2, (nh - H) // 2
    ref = Image.fromarray(pixels).resize((nw, nh), Image.BICUBIC).crop((left, top, left + W, top + H))
    ref = torch.from_numpy(np.asarray(ref).copy()).permute(2, 0, 1).float() / 255 * 2 - 1
    out = fit_to_bucket(torch.from_numpy(pixels)[None], W, H)[:, 0]
    assert out.shape == ref.shape
    diff = (out - ref).abs()
    # within PIL's 8-bit rounding (measured max 0.0039); a crop one pixel off gives max 0.1 to 2
    assert diff.max() < 0.006, diff.max()


def write_image_array(w, h):
    """A smooth image with detail (so a misplaced crop or scale shows)."""
    y, x = np.mgrid[0:h, 0:w]
    r = 127 + 120 * np.sin(x / 3.0)
    g = 127 + 120 * np.cos(y / 4.0)
    b = (x * 255 / max(1, w - 1) + y * 0) % 256
    return np.stack([r, g, b], -1).astype(np.uint8)


# --------------------------------------------------------------------------------------------
# Scanning
# --------------------------------------------------------------------------------------------


def test_scan_items_skips_notes_and_repeats(media):
    ds = scan_media(media, BUCKETS, fps=8, repeats=2)
    by_name = {item.path.name: item for item in ds.items}
    assert sorted(by_name) == ["a.mp4", "b.webm", "portrait.png", "short.mp4", "square.jpg"]
    a = by_name["a.mp4"]
    assert a.bucket == Bucket(48, 32, 5) and a.frame_indices == (0, 3, 6, 9, 12)
    assert a.source_fps == 24 and a.source_frames == 40 and a.caption == "a cat walks on the grass"
    assert by_name["b.webm"].source_frames == 40  # counted by decoding (webm stores no frame count)
    assert by_name["portrait.png"].bucket == Bucket(32, 48, 1) and by_name["portrait.png"].is_image
    assert by_name["square.jpg"].bucket == Bucket(32, 32, 1) and by_name["square.jpg"].caption == ""
    # 5 frames at 24 fps = 2 frames at 8 fps: shortened to the longest 1 + 4k, i.e. 1 frame
    assert by_name["short.mp4"].bucket == Bucket(48, 32, 1) and by_name["short.mp4"].frame_indices == (0,)
    notes = {Path(p).name: why for p, why in ds.notes}
    assert notes["short.mp4"] == "shortened to 1 frames for bucket 48x32x5 (5 frames at 24 fps = 2 at 8 fps)"
    assert "empty caption file square.txt" in notes["square.jpg"]
    reasons = skip_reasons(ds)
    assert reasons["nocap.mp4"] == "no caption file nocap.txt"
    assert reasons["empty.webm"] == "empty file (0 bytes)"
    assert reasons["corrupt.mp4"].startswith("cannot read the video")
    assert reasons["truncated.png"].startswith("cannot read the image")
    assert reasons["notes.md"].startswith("unsupported file type .md")
    assert reasons["zero.mp4"] == "no video stream in the file"  # the muxer keeps no track without frames
    assert set(reasons) == {"nocap.mp4", "empty.webm", "corrupt.mp4", "truncated.png", "notes.md", "zero.mp4"}
    # repeats: x2 everywhere, x3 more in the kohya folder 3_more
    assert by_name["a.mp4"].repeats == 2 and by_name["portrait.png"].repeats == 6
    assert len(ds) == 2 + 2 + 6 + 2 + 6
    assert [ds.item_of(i).path.name for i in range(len(ds))].count("square.jpg") == 6
    summary = ds.summary()
    assert "5 files (18 clips with repeats)" in summary and "nocap.mp4: no caption file nocap.txt" in summary
    clip = ds[[ds.item_of(i).path.name for i in range(len(ds))].index("a.mp4")]
    assert clip["video"].shape == (3, 5, 32, 48) and clip["caption"] == "a cat walks on the grass"
    assert levels(clip["video"]) == [0, 3, 6, 9, 12]  # the crop keeps the grey top rows


def test_videos_shorter_than_the_bucket(media):
    ds = scan_media(media, "48x32x81", fps=8)
    a = next(item for item in ds.items if item.path.name == "a.mp4")
    # 40 frames at 24 fps = 14 at 8 fps: the longest 1 + 4k is 13
    assert a.bucket == Bucket(48, 32, 13) and a.frame_indices == tuple(range(0, 39, 3))
    assert (str(a.path), "shortened to 13 frames for bucket 48x32x81 (40 frames at 24 fps = 14 at 8 fps)") in ds.notes
    assert {item.bucket.frames for item in ds.items} == {13, 1}
    # with "skip" only the images are left (an image is a 1-frame clip, never "too short")
    ds = scan_media(media, "48x32x81", fps=8, short_videos="skip")
    assert all(item.is_image for item in ds.items) and len(ds.items) == 2
    assert skip_reasons(ds)["a.mp4"] == "too short for bucket 48x32x81: 40 frames at 24 fps = 14 at 8 fps"


def test_scan_options(media):
    ds = scan_media(media, [(48, 32, 5), (32, 32, 1)], fps=16, short_videos="skip", default_caption="a clip")
    by_name = {item.path.name: item for item in ds.items}
    assert by_name["nocap.mp4"].caption == "a clip" and by_name["nocap.mp4"].bucket == Bucket(48, 32, 5)
    assert by_name["a.mp4"].frame_indices == (0, 2, 3, 5, 6)
    assert skip_reasons(ds)["short.mp4"] == "too short for bucket 48x32x5: 5 frames at 24 fps = 3 at 16 fps"
    # without a portrait bucket the portrait goes to the nearest aspect (square)
    assert by_name["portrait.png"].bucket == Bucket(32, 32, 1)


def test_scan_errors(media, tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        scan_media(tmp_path / "nowhere", BUCKETS)
    for kwargs, match in [({"fps": 0}, "fps must be a positive"), ({"repeats": 0}, "repeats must be"),
                          ({"short_videos": "pad"}, "short_videos must be one of")]:
        with pytest.raises(DatasetError, match=match):
            scan_media(media, BUCKETS, **kwargs)
    with pytest.raises(DatasetError, match="multiples of 16"):
        scan_media(media, [(40, 32, 5)])
    (tmp_path / "bad.mp4").write_bytes(b"\0" * 100)
    caption(tmp_path / "bad.mp4", "x")
    write_video(tmp_path / "0_off" / "v.mp4", frames=5)
    caption(tmp_path / "0_off" / "v.mp4", "x")
    with pytest.raises(DatasetError, match=r"no usable media.*\n.*0_off.*0 repeats.*\n.*bad.mp4: cannot read the video"):
        scan_media(tmp_path, BUCKETS)


# --------------------------------------------------------------------------------------------
# Latent cache
# --------------------------------------------------------------------------------------------

# Small clips keep the tiny VAE fast on the CPU: 64x32 videos -> 32x16 latents of 2 frames.
SMALL = "32x16x5, 16x32x5, 16x16x1"


class Counter:
    """Counts calls of a model's encode method, wrapped on the instance (the weights are untouched)."""

    def __init__(self, model):
        self.model, self.calls = model, 0
        inner = model.encode

        def counted(*args, **kwargs):
            self.calls += 1
            return inner(*args, **kwargs)

        counted.__signature__ = inspect.signature(inner)  # keeps the padding= the cache looks for
        model.encode = counted

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        del self.model.encode


@pytest.fixture(scope="module")
def vae():
    return random_vae("2.1", seed=3)


@pytest.fixture(scope="module")
def text_encoder():
    return WanTextEncoder(random_umt5(seed=4), SentencePieceTokenizer(tiny_spiece_model(), "tiny"))


def small_media(root):
    caption(write_video(root / "a.mp4", frames=16, width=64, height=32), "a cat walks")
    caption(write_video(root / "2_x" / "b.webm", frames=16, width=64, height=32, codec="libvpx-vp9"), "a dog")
    write_image(root / "c.png", 40, 64)
    caption(root / "c.png", "a cat walks")  # the same caption as a.mp4: one text file
    return root


@pytest.fixture(scope="module")
def built(tmp_path_factory, vae, text_encoder):
    """A cache built once; tests that change things work on copies (keys hold no paths, so a copied
    media folder still finds its cache files)."""
    root = tmp_path_factory.mktemp("built")
    media = small_media(root / "media")
    ds = scan_media(media, SMALL, fps=8)
    progress = []
    with Counter(vae) as vae_calls, Counter(text_encoder) as text_calls:
        cache = build_latent_cache(ds, vae, text_encoder, root / "cache", callback=lambda *a: progress.append(a))
    return SimpleNamespace(media=media, ds=ds, cache_dir=root / "cache", cache=cache, progress=progress,
                           vae_calls=vae_calls.calls, text_calls=text_calls.calls)


def copy_of(built, tmp_path):
    shutil.copytree(built.media, tmp_path / "media")
    shutil.copytree(built.cache_dir, tmp_path / "cache")
    return tmp_path / "media", tmp_path / "cache"


def names(cache):
    return [Path(cache.entry_of(i).source).name for i in range(len(cache))]


def test_cache_values(built, vae, text_encoder):
    cache, ds = built.cache, built.ds
    assert built.vae_calls == 3 and built.text_calls == 2 and built.progress == [(1, 3), (2, 3), (3, 3)]
    assert cache.stats == dict(latents_encoded=3, latents_reused=0, texts_encoded=2, texts_reused=1)
    assert cache.skipped == [] and names(cache) == ["b.webm", "b.webm", "a.mp4", "c.png"]  # kohya 2_x
    for i in (2, 3):  # a.mp4, c.png (b.webm's frames are checked above, the tiny VAE is slow on the CPU)
        item, source = cache[i], ds.item_of(i)
        assert item["source"] == str(source.path) and item["caption"] == source.caption
        assert set(item) == {"latent", "context", "caption", "source"}
        expected = vae.encode(source.load()[None], normalized=True)[0]
        torch.testing.assert_close(item["latent"], expected, atol=1e-6, rtol=1e-6)
        context = text_encoder.encode([source.caption])[0]  # padded to 512 here, to its own length in the cache
        torch.testing.assert_close(item["context"], context, atol=1e-5, rtol=1e-5)
        assert item["latent"].dtype == torch.float32 and not item["latent"].is_inference()
    assert cache.bucket_of(2) == (32, 16, 5) and cache[2]["latent"].shape == (16, 2, 2, 4)
    assert cache.bucket_of(3) == (16, 32, 1) and cache[3]["latent"].shape == (16, 1, 4, 2)
    assert cache.bucket_of(0) == cache.bucket_of(2)
    assert "3 files cached (4 clips with repeats)" in cache.summary()


def test_cache_reuse_and_reopen(built, vae, text_encoder):
    with Counter(vae) as vae_calls, Counter(text_encoder) as text_calls:
        again = build_latent_cache(built.ds, vae, text_encoder, built.cache_dir)
    assert vae_calls.calls == 0 and text_calls.calls == 0
    assert again.stats == dict(latents_encoded=0, latents_reused=3, texts_encoded=0, texts_reused=3)
    reopened = load_latent_cache(built.cache_dir)  # from index.json, no encoders
    assert len(reopened) == 4 and names(reopened) == names(built.cache)
    for i in range(4):
        assert reopened.bucket_of(i) == built.cache.bucket_of(i)
        assert torch.equal(reopened[i]["latent"], built.cache[i]["latent"])
        assert torch.equal(reopened[i]["context"], built.cache[i]["context"])


def test_cache_invalidation_and_corrupt_files(built, tmp_path, vae, text_encoder):
    media, cache_dir = copy_of(built, tmp_path)

    def rebuild(fps=8, model=vae):
        with Counter(model) as vae_calls, Counter(text_encoder) as text_calls:
            stats = build_latent_cache(scan_media(media, SMALL, fps=fps), model, text_encoder, cache_dir).stats
        assert (vae_calls.calls, text_calls.calls) == (stats["latents_encoded"], stats["texts_encoded"])
        return stats

    # a caption edit re-encodes that caption only
    caption(media / "c.png", "a portrait of a cat")
    assert rebuild() == dict(latents_encoded=0, latents_reused=3, texts_encoded=1, texts_reused=2)
    # new content in a file re-encodes its latent
    write_video(media / "a.mp4", frames=17, width=64, height=32)
    assert rebuild() == dict(latents_encoded=1, latents_reused=2, texts_encoded=0, texts_reused=3)
    # another fps picks other frames: the videos are encoded again, the image is not
    assert rebuild(fps=12) == dict(latents_encoded=2, latents_reused=1, texts_encoded=0, texts_reused=3)
    # a truncated latent file and a garbage text file are recomputed, not a crash
    newest = max(cache_dir.glob("latent-*.safetensors"), key=lambda p: p.stat().st_mtime_ns)
    newest.write_bytes(newest.read_bytes()[:100])
    sorted(cache_dir.glob("text-*.safetensors"))[0].write_bytes(b"not a safetensors file")
    stats = rebuild(fps=12)
    assert stats["latents_encoded"] == 1 and stats["texts_encoded"] == 1
    # another VAE (other weights) means other latents; the same weights the same identity
    other = random_vae("2.1", seed=9)
    assert model_identity(other) != model_identity(vae) == model_identity(random_vae("2.1", seed=3))
    assert model_identity(text_encoder) != model_identity(
        WanTextEncoder(random_umt5(seed=5), SentencePieceTokenizer(tiny_spiece_model(), "tiny")))
    image_only = [item for item in scan_media(media, SMALL, fps=12).items if item.is_image]
    stats = build_latent_cache(image_only, other, text_encoder, cache_dir).stats
    assert stats["latents_encoded"] == 1 and stats["texts_reused"] == 1


def test_cache_skips_files_that_no_longer_decode(built, tmp_path, vae, text_encoder):
    media, cache_dir = copy_of(built, tmp_path)
    ds = scan_media(media, SMALL, fps=8)
    (media / "a.mp4").write_bytes(b"\0" * 1000)  # replaced after the scan
    cache = build_latent_cache(ds, vae, text_encoder, cache_dir)
    assert names(cache) == ["b.webm", "b.webm", "c.png"] and cache.stats["latents_reused"] == 2
    assert [(Path(p).name, why.split(" (")[0]) for p, why in cache.skipped] == [("a.mp4", "cannot read the video")]
    assert "a.mp4: cannot read the video" in cache.summary()
    shutil.rmtree(media / "2_x")
    (media / "c.png").unlink()
    with pytest.raises(DatasetError, match=r"no file could be encoded:\n.*b.webm: cannot read.*\n.*a.mp4: cannot read the video"):
        build_latent_cache(ds, vae, text_encoder, cache_dir)


def test_reopen_errors(built, tmp_path):
    with pytest.raises(DatasetError, match="index.json not found: build the latent cache first"):
        load_latent_cache(tmp_path)
    _, cache_dir = copy_of(built, tmp_path)
    (cache_dir / built.cache.entries[1].latent_file).unlink()  # a.mp4's latent
    reopened = load_latent_cache(cache_dir)
    assert names(reopened) == ["b.webm", "b.webm", "c.png"]
    assert reopened.skipped[-1] == (str(built.ds.items[1].path), f"cache file {built.cache.entries[1].latent_file} "
                                                                  f"is missing or unreadable")
    stale = CachedLatents(cache_dir, built.cache.entries, [])
    with pytest.raises(RuntimeError, match=r"cannot be read .*build the cache again"):
        stale[2]
    (cache_dir / "index.json").write_text('{"format": 0}')
    with pytest.raises(DatasetError, match="cache format 0, expected 1"):
        load_latent_cache(cache_dir)


def test_image_conditioning(built, tmp_path, vae, text_encoder):
    clip = random_clip_vision(seed=2)
    items = [item for item in built.ds.items if item.path.name in ("a.mp4", "c.png")]
    cache = build_latent_cache(items, vae, text_encoder, tmp_path / "cache", image_conditioning=True, clip_vision=clip)
    assert cache.stats["latents_encoded"] == 2  # the conditioning is part of the key: not the plain files
    for i, source in enumerate(items):
        item = cache[i]
        video = source.load()
        raw, known = image_condition(vae, video[None, :, 0], None, source.bucket.frames)
        torch.testing.assert_close(item["y"], concat_y(vae.normalize(raw), known)[0], atol=1e-6, rtol=1e-6)
        assert item["y"].shape == (20, *item["latent"].shape[1:])
        assert item["y"][:4, 0].eq(1).all() and not item["y"][:4, 1:].any()  # only pixel frame 0 is given
        fea = clip_features(clip, video[None, :, 0], None)[0]
        assert item["clip_fea"].shape == fea.shape == (1 + (clip.image_size // clip.config.patch_size) ** 2, clip.config.hidden_size)
        torch.testing.assert_close(item["clip_fea"], fea, atol=1e-5, rtol=1e-5)
    assert cache[0]["y"].shape[1] == 2 and cache[1]["y"].shape[1] == 1


def test_model_checks(built, tmp_path, vae, text_encoder):
    vae22 = random_vae("2.2", seed=0)
    with pytest.raises(DatasetError, match=r"multiples of 32 for the Wan2.2 VAE \(stride 16 x DiT patch 2\).*32x16x5"):
        build_latent_cache(built.ds, vae22, text_encoder, tmp_path)
    image = [item for item in scan_media(built.media, "64x32x5, 32x64x5", fps=8).items if item.is_image]
    with pytest.raises(ValueError, match=r"image conditioning .* is for the Wan2.1 VAE"):
        build_latent_cache(image, vae22, text_encoder, tmp_path, image_conditioning=True)
    with pytest.raises(ValueError, match="clip_vision is only used with image_conditioning=True"):
        build_latent_cache(image, vae, text_encoder, tmp_path, clip_vision=object())
    with pytest.raises(DatasetError, match="no items"):
        build_latent_cache([], vae, text_encoder, tmp_path)
    cache = build_latent_cache(image, vae22, text_encoder, tmp_path / "c22")  # Wan2.2: 48 channels, stride 16
    torch.testing.assert_close(cache[0]["latent"], vae22.encode(image[0].load()[None])[0], atol=1e-6, rtol=1e-6)
    assert cache[0]["latent"].shape == (48, 1, 4, 2)


def test_latents_fit_model():
    """The check the training node and the command line share: channels, y, text width, CLIP features."""
    from wan_core.testing.dit import tiny_config
    from wan_core.training.latent_cache import check_latents_fit_model

    plain = [{"latent": torch.zeros(16, 2, 4, 4), "context": torch.zeros(5, 64)}]
    with_y = [{**plain[0], "y": torch.zeros(20, 2, 4, 4)}]
    check_latents_fit_model(plain, tiny_config("t2v"))
    check_latents_fit_model(with_y, tiny_config("i2v-2.2"))
    check_latents_fit_model([{**with_y[0], "clip_fea": torch.zeros(257, 1280)}], tiny_config("i2v"))
    with pytest.raises(ValueError, match="16 channels, but .* takes 36 input channels: cache the latents with image "
                                         "conditioning \\(y\\) with this model's VAE"):
        check_latents_fit_model(plain, tiny_config("i2v-2.2"))
    with pytest.raises(ValueError, match="16 channels \\+ 20 of y, but .* takes 48 input channels"):
        check_latents_fit_model(with_y, tiny_config("ti2v"))
    with pytest.raises(ValueError, match="text embeddings are 64 wide, the model takes 32"):
        check_latents_fit_model(plain, tiny_config("t2v", text_dim=32))
    with pytest.raises(ValueError, match="needs CLIP image features"):
        check_latents_fit_model(with_y, tiny_config("i2v"))
