"""WanFlow Save Video outside ComfyUI: files that read back as the frames, ComfyUI-style names and counters,
confinement to the output folder, atomic writes, clear errors."""
import importlib
import os

import imageio.v3 as iio
import numpy as np
import pytest
import torch
from test_nodes import import_pack

# mean abs error (in 0..255 levels) of the read-back frames on the smooth moving gradient below. Measured with
# both codecs: 1.9 at crf 0 (yuv420p chroma subsampling alone) to 2.4 at crf 19 (4.7 / 12.6 at crf 35 / 51 for
# H.264); the wrong-content controls (frames reversed, image shifted) come out at 43 and 30.
TOLERANCE = 5.0


def module():
    return importlib.import_module(import_pack().__name__ + ".nodes.save_video")


def node():
    return module().WanFlowSaveVideo()


@pytest.fixture()
def out_dir(tmp_path, monkeypatch):
    folder = tmp_path / "output"
    monkeypatch.setenv("WANFLOW_OUTPUT_DIR", str(folder))
    return folder


def moving_gradient(n=9, h=64, w=96):
    """Smooth colour ramps drifting right a few pixels per frame, [N, H, W, 3] in 0..1."""
    t = torch.arange(n).view(n, 1, 1).float()
    y = torch.arange(h).view(1, h, 1).float()
    x = torch.arange(w).view(1, 1, w).float()
    r = (x + 4 * t) / (w + 4 * n) + 0 * y
    g = y / h + 0 * (x + t)
    b = 0.5 + 0.4 * torch.sin((x + y) / 15 + t / 2)
    return torch.stack([r, g, b], -1)


def read_back(out_dir, result):
    entry = result["ui"]["images"][0]
    path = out_dir / entry["subfolder"] / entry["filename"]
    frames = iio.imread(path, plugin="pyav")
    return path, frames, iio.immeta(path, plugin="pyav")


def error_levels(frames, images):
    return float(np.abs(frames.astype(np.float64) - images.numpy() * 255).mean())


@pytest.mark.parametrize("fmt,fps", [("mp4", 16.0), ("webm", 24.0)])
@pytest.mark.parametrize("quality", [0, 19])
def test_round_trip(out_dir, fmt, fps, quality):
    images = moving_gradient()
    result = node().save(images, fps, "wanflow/clip", fmt, quality)
    assert result["ui"]["animated"] == (True,)
    assert result["ui"]["images"] == [{"filename": f"clip_00001_.{fmt}", "subfolder": "wanflow", "type": "output"}]
    path, frames, meta = read_back(out_dir, result)
    assert frames.shape == (9, 64, 96, 3) and frames.dtype == np.uint8
    assert meta["fps"] == pytest.approx(fps)
    assert error_levels(frames, images) < TOLERANCE
    # controls: the same file against wrong content fails the tolerance
    assert error_levels(frames, images.flip(0)) > 2 * TOLERANCE              # frames in reverse order
    assert error_levels(frames, images.roll(12, dims=2)) > 2 * TOLERANCE     # shifted sideways
    assert sorted(os.listdir(path.parent)) == [path.name]                   # no temporary file left


@pytest.mark.parametrize("fmt", ["mp4", "webm"])
def test_quality_is_the_crf(out_dir, fmt):
    images = moving_gradient()
    sizes = {}
    for quality in (0, 51):
        path, _, _ = read_back(out_dir, node().save(images, 16.0, f"q{quality}", fmt, quality))
        sizes[quality] = path.stat().st_size
    assert sizes[51] * 3 < sizes[0]


def test_counter_increments_and_never_overwrites(out_dir):
    images = moving_gradient(n=3, h=16, w=16)
    names = [node().save(images, 16.0, "wanflow/video", "mp4", 19)["ui"]["images"][0]["filename"] for _ in range(2)]
    assert names == ["video_00001_.mp4", "video_00002_.mp4"]
    first = out_dir / "wanflow" / names[0]
    first_bytes = first.read_bytes()
    # the counter continues after the highest existing one, whatever the extension
    (out_dir / "wanflow" / "video_00007_.webm").write_bytes(b"x")
    (out_dir / "wanflow" / "videos_00042_.mp4").write_bytes(b"x")   # another prefix: ignored
    assert node().save(images, 16.0, "wanflow/video", "mp4", 19)["ui"]["images"][0]["filename"] == "video_00008_.mp4"
    assert first.read_bytes() == first_bytes
    # no subfolder: the file is directly in the output folder
    result = node().save(images, 16.0, "plain", "webm", 19)
    assert result["ui"]["images"][0] == {"filename": "plain_00001_.webm", "subfolder": "", "type": "output"}
    assert (out_dir / "plain_00001_.webm").is_file()


def test_placeholders(out_dir):
    result = node().save(moving_gradient(n=2, h=16, w=24), 16.0, "sizes/v_%width%x%height%", "mp4", 19)
    assert result["ui"]["images"][0]["filename"] == "v_24x16_00001_.mp4"


@pytest.mark.parametrize("prefix", ["../escape", "wanflow/../../escape", "/tmp/abs", "\\\\server\\share\\x",
                                    "..\\escape", "", "   ", "wanflow/", "."])
def test_prefix_must_stay_inside_the_output_folder(out_dir, prefix):
    with pytest.raises(ValueError, match="filename_prefix must be a relative path inside the output folder"):
        node().save(moving_gradient(n=2, h=16, w=16), 16.0, prefix, "mp4", 19)
    outside = [p for p in out_dir.parent.rglob("*") if p.is_file()]
    assert outside == []


def test_symlinked_subfolder_leading_out_is_rejected(out_dir, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    out_dir.mkdir()
    (out_dir / "link").symlink_to(elsewhere, target_is_directory=True)
    with pytest.raises(ValueError, match="resolves to"):
        node().save(moving_gradient(n=2, h=16, w=16), 16.0, "link/video", "mp4", 19)
    assert list(elsewhere.iterdir()) == []


@pytest.mark.parametrize("fmt", ["mp4", "webm"])
def test_odd_sizes_are_padded_by_edge_replication(out_dir, fmt):
    images = moving_gradient(n=5, h=33, w=47)
    _, frames, _ = read_back(out_dir, node().save(images, 16.0, "odd", fmt, 0))
    assert frames.shape == (5, 34, 48, 3)
    assert error_levels(frames[:, :33, :47], images) < TOLERANCE
    padded = torch.cat([images, images[:, :, -1:]], 2)
    padded = torch.cat([padded, padded[:, -1:]], 1)
    assert error_levels(frames, padded) < TOLERANCE


def test_single_frame_and_out_of_range_values(out_dir):
    images = moving_gradient(n=1, h=32, w=32) * 1.4 - 0.2   # values outside 0..1 are clamped
    _, frames, _ = read_back(out_dir, node().save(images, 16.0, "one", "mp4", 0))
    assert frames.shape == (1, 32, 32, 3)
    assert error_levels(frames, images.clamp(0, 1)) < TOLERANCE


@pytest.mark.parametrize("images,message", [
    (torch.rand(3, 16, 16), "expected IMAGE frames \\[N, H, W, 3\\] with N >= 1, found \\(3, 16, 16\\)"),
    (torch.rand(0, 16, 16, 3), "found \\(0, 16, 16, 3\\)"),
    (torch.rand(2, 16, 16, 4), "found \\(2, 16, 16, 4\\)"),
    (np.zeros((2, 16, 16, 3)), "found ndarray"),
])
def test_bad_images(out_dir, images, message):
    with pytest.raises(ValueError, match=message):
        node().save(images, 16.0, "bad", "mp4", 19)
    assert not out_dir.exists() or list(out_dir.rglob("*")) == []


def test_bad_options(out_dir):
    images = moving_gradient(n=2, h=16, w=16)
    with pytest.raises(ValueError, match="format must be one of \\['mp4', 'webm'\\], found 'gif'"):
        node().save(images, 16.0, "bad", "gif", 19)
    with pytest.raises(ValueError, match="fps must be > 0"):
        node().save(images, 0.0, "bad", "mp4", 19)
    with pytest.raises(ValueError, match="quality \\(CRF\\) must be in 0..51"):
        node().save(images, 16.0, "bad", "mp4", 60)


def test_interrupted_write_leaves_no_file(out_dir, monkeypatch):
    mod = module()
    real = mod.encode_video

    def interrupted(path, images, fps, fmt, crf, callback=None):
        def stop(done, total):
            if done == 2:
                raise KeyboardInterrupt  # like ComfyUI's interrupt, raised from the progress callback
        real(path, images, fps, fmt, crf, callback=stop)

    monkeypatch.setattr(mod, "encode_video", interrupted)
    with pytest.raises(KeyboardInterrupt):
        node().save(moving_gradient(n=4, h=16, w=16), 16.0, "wanflow/video", "mp4", 19)
    assert list((out_dir / "wanflow").iterdir()) == []


def test_uses_comfyui_output_folder_when_present(tmp_path, monkeypatch):
    mod = module()
    calls = []

    class FakeFolderPaths:
        @staticmethod
        def get_output_directory():
            return str(tmp_path / "comfy_out")

        @staticmethod
        def get_save_image_path(prefix, output_dir, width, height):
            calls.append((prefix, output_dir, width, height))
            folder = os.path.join(output_dir, "sub")
            os.makedirs(folder, exist_ok=True)
            return folder, "clip", 3, "sub", prefix

    monkeypatch.setattr(mod, "_comfy", lambda name: FakeFolderPaths if name == "folder_paths" else None)
    result = node().save(moving_gradient(n=2, h=15, w=20), 16.0, "sub/clip", "mp4", 19)
    assert calls == [("sub/clip", str(tmp_path / "comfy_out"), 20, 16)]  # the padded size
    assert result["ui"]["images"] == [{"filename": "clip_00003_.mp4", "subfolder": "sub", "type": "output"}]
    assert (tmp_path / "comfy_out" / "sub" / "clip_00003_.mp4").is_file()


def test_v1_contract():
    cls = module().WanFlowSaveVideo
    required = cls.INPUT_TYPES()["required"]
    assert list(required) == ["images", "fps", "filename_prefix", "format", "quality"]
    assert all(options.get("tooltip") for _, options in required.values())
    assert required["format"][0] == ["mp4", "webm"]
    assert required["fps"][1]["default"] == 16 and required["quality"][1]["default"] == 19
    assert cls.OUTPUT_NODE is True and cls.RETURN_TYPES == () and cls.CATEGORY.startswith("WanFlow/")
    assert callable(getattr(cls, cls.FUNCTION)) and cls.DESCRIPTION
