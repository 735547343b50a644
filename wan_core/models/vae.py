"""The Wan video VAEs: Wan2.1's (z 16, stride 4x8x8) and Wan2.2's (z 48, stride 4x16x16).

Both are causal 3-D conv autoencoders. A video of 1 + 4k frames is processed in time chunks -
the first frame alone, then 4 frames at a time (encode), or one latent frame at a time (decode) -
and every causal 3x3x3 conv remembers the last two frames it saw, so chunked processing equals
processing the whole clip at once. The temporal resamplers treat the first chunk specially (it is
an image), which is why the chunking itself is part of the model's definition.

Here each conv keeps its own history (`CausalConv3d.history`) instead of the official flat
cache list; `WanVAE.reset_history()` starts a new clip. Parameter names are the official ones,
so official and ComfyUI files load without renaming.

After the last temporal resampler the networks are purely causal convs, norms and 2-D ops, so
those stages are streamed one frame at a time: identical results, a quarter of the peak memory.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from .dit import PATCH_SIZE as DIT_PATCH_SIZE
from .vae_tiling import choose_tile, tiled_decode, tiled_encode

# Official per-channel latent statistics (normalized latent = (mu - mean) / std).
LATENT_MEAN = {
    "2.1": [-0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
            0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921],
    "2.2": [-0.2289, -0.0052, -0.1323, -0.2339, -0.2799, 0.0174, 0.1838, 0.1557, -0.1382, 0.0542,
            0.2813, 0.0891, 0.1570, -0.0098, 0.0375, -0.1825, -0.2246, -0.1207, -0.0698, 0.5109,
            0.2665, -0.2108, -0.2158, 0.2502, -0.2055, -0.0322, 0.1109, 0.1567, -0.0729, 0.0899,
            -0.2799, -0.1230, -0.0313, -0.1649, 0.0117, 0.0723, -0.2839, -0.2083, -0.0520, 0.3748,
            0.0152, 0.1957, 0.1433, -0.2944, 0.3573, -0.0548, -0.1681, -0.0667],
}
LATENT_STD = {
    "2.1": [2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
            3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160],
    "2.2": [0.4765, 1.0364, 0.4514, 1.1677, 0.5313, 0.4990, 0.4818, 0.5013, 0.8158, 1.0344,
            0.5894, 1.0901, 0.6885, 0.6165, 0.8454, 0.4978, 0.5759, 0.3523, 0.7135, 0.6804,
            0.5833, 1.4146, 0.8986, 0.5659, 0.7069, 0.5338, 0.4889, 0.4917, 0.4069, 0.4999,
            0.6866, 0.4093, 0.5709, 0.6065, 0.6415, 0.4944, 0.5726, 1.2042, 0.5458, 1.6887,
            0.3971, 1.0600, 0.3943, 0.5537, 0.5444, 0.4089, 0.7468, 0.7744],
}


@dataclass(frozen=True)
class VAEVersion:
    """One released Wan VAE: the one home of its latent geometry. Everything else that needs latent
    channels, strides or the pixel patch (latent shapes, bucket sizes, previews, the demo codec,
    error messages) reads it from `VAE_VERSIONS` / `vae_for_latent`."""

    version: str                  # "2.1" | "2.2": the key of the latent statistics
    name: str                     # "Wan2.1": how messages name it
    latent_channels: int          # z_dim
    stride: tuple[int, int, int]  # pixels per latent pixel: (frames, height, width)
    patch: int                    # pixels per side folded into channels before the encoder
    enc_dim: int                  # encoder / decoder widths of the released file
    dec_dim: int

    @property
    def size_multiple(self) -> int:
        """Width and height must be multiples of this: VAE stride x DiT patch."""
        return self.stride[1] * DIT_PATCH_SIZE[1]

    def describe(self) -> str:
        """'Wan2.1 VAE (16 latent channels)'."""
        return f"{self.name} VAE ({self.latent_channels} latent channels)"


VAE_VERSIONS = {
    "2.1": VAEVersion("2.1", "Wan2.1", latent_channels=16, stride=(4, 8, 8), patch=1, enc_dim=96, dec_dim=96),
    "2.2": VAEVersion("2.2", "Wan2.2", latent_channels=48, stride=(4, 16, 16), patch=2, enc_dim=160, dec_dim=256),
}
LATENT_VERSIONS = {v.latent_channels: k for k, v in VAE_VERSIONS.items()}  # latent channels -> VAE version
SIZE_MULTIPLE = min(v.size_multiple for v in VAE_VERSIONS.values())  # what any Wan VAE accepts (16)


def vae_for_latent(channels: int) -> VAEVersion | None:
    """The VAE whose latents have `channels` channels (None for any other count)."""
    version = LATENT_VERSIONS.get(channels)
    return None if version is None else VAE_VERSIONS[version]


def latent_channel_choices() -> str:
    """'16 or 48': the channel counts of Wan video latents, for messages."""
    return " or ".join(str(c) for c in LATENT_VERSIONS)


@dataclass(frozen=True)
class VAEConfig:
    version: str = "2.1"          # a key of VAE_VERSIONS
    enc_dim: int = 96
    dec_dim: int = 96
    z_dim: int = 16
    dim_mult: tuple = (1, 2, 4, 4)
    num_res_blocks: int = 2
    temporal_down: tuple = (False, True, True)

    def __post_init__(self):
        spec = VAE_VERSIONS.get(self.version)
        if spec is None:
            raise ValueError(f"VAE version must be one of {list(VAE_VERSIONS)}, found {self.version!r}")
        s = spec.patch * 2 ** (len(self.dim_mult) - 1)
        if (2 ** sum(self.temporal_down), s, s) != spec.stride:  # the resamplers must give the version's stride
            raise ValueError(f"VAE dim_mult {self.dim_mult} / temporal_down {self.temporal_down} do not give the "
                             f"{spec.name} VAE's stride {spec.stride}")

    @property
    def spec(self) -> VAEVersion:
        return VAE_VERSIONS[self.version]

    @property
    def patch(self) -> int:
        """Pixel patchify factor applied before the encoder (Wan2.2 folds 2x2 pixels into channels)."""
        return self.spec.patch

    @property
    def stride(self) -> tuple[int, int, int]:
        return self.spec.stride

    @property
    def width_ratio(self) -> float:
        """Decoder width against the released file's (tiny test models are narrower)."""
        return self.dec_dim / self.spec.dec_dim

    @classmethod
    def released(cls, version: str) -> "VAEConfig":
        spec = VAE_VERSIONS[version]
        return cls(version=version, enc_dim=spec.enc_dim, dec_dim=spec.dec_dim, z_dim=spec.latent_channels)


class CausalConv3d(nn.Conv3d):
    """A Conv3d that sees only the past: 2*p_t zero frames in front, none behind.

    With temporal context (p_t > 0) it keeps the last two frames of its input in `history` and
    prepends them to the next call, replacing the zero frames, as the official feature cache does.
    Spatial padding is left to the conv itself (same zeros, no padded copy).
    """

    def __init__(self, cin: int, cout: int, kernel, stride=1, padding=0):
        kernel, stride, padding = (_triple(v) for v in (kernel, stride, padding))
        super().__init__(cin, cout, kernel, stride=stride, padding=(0, padding[1], padding[2]))
        self.time_pad = 2 * padding[0]
        self.history: torch.Tensor | None = None

    def with_past(self, x: torch.Tensor, past: torch.Tensor | None) -> torch.Tensor:
        """`x` with the frames `past` (or zeros where there are none) in front: time_pad extra frames."""
        missing = self.time_pad - (past.shape[2] if past is not None else 0)
        parts = [past] if past is not None else []
        if missing > 0:
            parts.insert(0, x.new_zeros(x.shape[0], x.shape[1], missing, *x.shape[3:]))
        return torch.cat(parts + [x], dim=2) if parts else x

    def causal(self, x: torch.Tensor, past: torch.Tensor | None) -> torch.Tensor:
        return super().forward(self.with_past(x, past))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.time_pad == 0:
            return super().forward(x)
        # The history is the last two frames of the padded input. Right after the first frame that
        # is [zero, frame] where the official cache holds [frame] and pads one zero: the same frames.
        past, self.history = self.history, None
        padded = self.with_past(x, past)
        del past  # its frames now live in `padded`: free them during the conv
        out = super().forward(padded)
        self.history = padded[:, :, -self.time_pad:].clone()
        return out


class RMSNorm(nn.Module):
    """Channel-wise L2 normalisation times sqrt(C) and a learned gain (no mean subtraction)."""

    def __init__(self, dim: int, spatial_dims: int = 3):
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(dim, *([1] * spatial_dims)))
        self.scale = dim ** 0.5

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # one full-size temporary instead of three (the two products are done in place)
        return F.normalize(x, dim=1).mul_(self.gamma * self.scale)


class ResidualBlock(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        # indices follow the official Sequential (2: conv, 5: dropout, inactive at inference)
        self.residual = nn.Sequential(
            RMSNorm(cin), nn.SiLU(), CausalConv3d(cin, cout, 3, padding=1),
            RMSNorm(cout), nn.SiLU(), nn.Identity(), CausalConv3d(cout, cout, 3, padding=1),
        )
        self.shortcut = CausalConv3d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.residual(x)
        return out.add_(self.shortcut(x))  # in place: one full-size tensor less at the peak


class AttentionBlock(nn.Module):
    """Single-head self-attention over the pixels of each frame (middle of both networks)."""

    def __init__(self, dim: int):
        super().__init__()
        self.norm = RMSNorm(dim, spatial_dims=2)
        self.to_qkv = nn.Conv2d(dim, dim * 3, 1)
        self.proj = nn.Conv2d(dim, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, t, h, w = x.shape
        frames = x.transpose(1, 2).reshape(b * t, c, h, w)
        q, k, v = self.to_qkv(self.norm(frames)).reshape(b * t, 3 * c, h * w).transpose(1, 2).unsqueeze(1).chunk(3, dim=-1)
        out = F.scaled_dot_product_attention(q, k, v).squeeze(1).transpose(1, 2).reshape(b * t, c, h, w)
        return x + self.proj(out).reshape(b, t, c, h, w).transpose(1, 2)


class NearestUpsample2x(nn.Module):
    """x2 nearest-neighbour upsampling, computed in fp32 as the official code does."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x.float(), scale_factor=2.0, mode="nearest-exact").type_as(x)


class Resample(nn.Module):
    """Spatial x2 down/up-sampling per frame, plus (3d modes) temporal x2 with first-chunk rules."""

    def __init__(self, dim: int, mode: str, out_dim: int | None = None):
        super().__init__()
        self.mode = mode
        if mode.startswith("down"):
            self.resample = nn.Sequential(nn.ZeroPad2d((0, 1, 0, 1)), nn.Conv2d(dim, dim, 3, stride=2))
            if mode == "downsample3d":
                self.time_conv = CausalConv3d(dim, dim, (3, 1, 1), stride=(2, 1, 1))
        else:
            self.resample = nn.Sequential(NearestUpsample2x(), nn.Conv2d(dim, out_dim or dim, 3, padding=1))
            if mode == "upsample3d":
                self.time_conv = CausalConv3d(dim, dim * 2, (3, 1, 1), padding=(1, 0, 0))
        self.temporal = mode.endswith("3d")
        self.state = None  # None: no chunk seen yet; downsample3d: the last frame the time conv needs next

    def per_frame(self, x: torch.Tensor) -> torch.Tensor:
        b, c, t, h, w = x.shape
        y = self.resample(x.transpose(1, 2).reshape(b * t, c, h, w))
        return y.reshape(b, t, *y.shape[1:]).transpose(1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "upsample3d":
            x = self._time_upsample(x)
        x = self.per_frame(x)
        if self.mode == "downsample3d":
            x = self._time_downsample(x)
        return x

    def _time_upsample(self, x: torch.Tensor) -> torch.Tensor:
        if self.state is None:  # the first chunk is one image frame: not doubled
            self.state = "seen"
            return x
        # From the second chunk on, time_conv is an ordinary causal conv that starts from zeros:
        # its own history reproduces the official cache ("Rep", then the last two frames).
        y = self.time_conv(x)
        b, c2, t, h, w = y.shape
        # channels [0:c] make frame 2t, channels [c:2c] frame 2t+1
        return y.reshape(b, 2, c2 // 2, t, h, w).permute(0, 2, 3, 1, 4, 5).reshape(b, c2 // 2, 2 * t, h, w)

    def _time_downsample(self, x: torch.Tensor) -> torch.Tensor:
        if self.state is None:  # the first chunk passes through; remember its last frame
            self.state = x[:, :, -1:].clone()
            return x
        past, self.state = self.state, x[:, :, -1:].clone()
        return self.time_conv.causal(torch.cat([past, x], dim=2), None)


class AvgDown3D(nn.Module):
    """Wan2.2's parameter-free shortcut: fold (t, s, s) blocks into channels and average groups."""

    def __init__(self, cin: int, cout: int, ft: int, fs: int):
        super().__init__()
        self.cout, self.ft, self.fs = cout, ft, fs
        self.group = cin * ft * fs * fs // cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ft, fs = self.ft, self.fs
        x = F.pad(x, (0, 0, 0, 0, (ft - x.shape[2] % ft) % ft, 0))
        b, c, t, h, w = x.shape
        x = x.reshape(b, c, t // ft, ft, h // fs, fs, w // fs, fs).permute(0, 1, 3, 5, 7, 2, 4, 6)
        return x.reshape(b, self.cout, self.group, t // ft, h // fs, w // fs).mean(dim=2)


class DupUp3D(nn.Module):
    """Wan2.2's parameter-free shortcut: repeat channels and unfold them into (t, s, s) blocks."""

    def __init__(self, cin: int, cout: int, ft: int, fs: int):
        super().__init__()
        self.cout, self.ft, self.fs = cout, ft, fs
        self.repeats = cout * ft * fs * fs // cin

    def forward(self, x: torch.Tensor, first_chunk: bool) -> torch.Tensor:
        ft, fs = self.ft, self.fs
        b, _, t, h, w = x.shape
        x = x.repeat_interleave(self.repeats, dim=1).reshape(b, self.cout, ft, fs, fs, t, h, w)
        x = x.permute(0, 1, 5, 2, 6, 3, 7, 4).reshape(b, self.cout, t * ft, h * fs, w * fs)
        return x[:, :, ft - 1:] if first_chunk else x


class DownBlock(nn.Module):
    """Wan2.2 encoder stage: residual blocks (+ resampler at index 2) plus the AvgDown3D shortcut."""

    def __init__(self, cin: int, cout: int, n_blocks: int, temporal: bool, down: bool):
        super().__init__()
        blocks = [ResidualBlock(cin if i == 0 else cout, cout) for i in range(n_blocks)]
        if down:
            blocks.append(Resample(cout, "downsample3d" if temporal else "downsample2d"))
        self.downsamples = nn.Sequential(*blocks)
        self.avg_shortcut = AvgDown3D(cin, cout, 2 if temporal else 1, 2 if down else 1)
        self.temporal = temporal

    def forward(self, x: torch.Tensor, first_chunk: bool = False) -> torch.Tensor:
        return self.downsamples(x) + self.avg_shortcut(x)


class UpBlock(nn.Module):
    """Wan2.2 decoder stage: residual blocks (+ resampler at index 3) plus the DupUp3D shortcut."""

    def __init__(self, cin: int, cout: int, n_blocks: int, temporal: bool, up: bool):
        super().__init__()
        blocks = [ResidualBlock(cin if i == 0 else cout, cout) for i in range(n_blocks)]
        if up:
            blocks.append(Resample(cout, "upsample3d" if temporal else "upsample2d", out_dim=cout))
        self.upsamples = nn.Sequential(*blocks)
        self.avg_shortcut = DupUp3D(cin, cout, 2 if temporal else 1, 2) if up else None
        self.temporal = temporal and up

    def forward(self, x: torch.Tensor, first_chunk: bool = False) -> torch.Tensor:
        main = self.upsamples(x)
        return main if self.avg_shortcut is None else main + self.avg_shortcut(x, first_chunk)


def _is_temporal(block: nn.Module) -> bool:
    return getattr(block, "temporal", False)


def _run(block: nn.Module, x: torch.Tensor, first_chunk: bool) -> torch.Tensor:
    return block(x, first_chunk) if isinstance(block, (DownBlock, UpBlock)) else block(x)


def _run_fresh(block: nn.Module, x: torch.Tensor, first_chunk: bool) -> torch.Tensor:
    """_run with the block's causal caches cleared first: in a single-chunk decode that is the state
    the block saw, and a recomputation in the backward pass (after other tiles ran) must see it too."""
    for m in block.modules():
        if isinstance(m, CausalConv3d):
            m.history = None
        elif isinstance(m, Resample):
            m.state = None
    return _run(block, x, first_chunk)


class Encoder(nn.Module):
    def __init__(self, cfg: VAEConfig):
        super().__init__()
        dims = [cfg.enc_dim * m for m in (1,) + tuple(cfg.dim_mult)]
        last = len(cfg.dim_mult) - 1
        self.conv1 = CausalConv3d(3 * cfg.patch ** 2, dims[0], 3, padding=1)
        blocks = []
        for i, (cin, cout) in enumerate(zip(dims[:-1], dims[1:])):
            temporal = cfg.temporal_down[i] if i < last else False
            if cfg.version == "2.2":
                blocks.append(DownBlock(cin, cout, cfg.num_res_blocks, temporal, down=i < last))
                continue
            for j in range(cfg.num_res_blocks):
                blocks.append(ResidualBlock(cin if j == 0 else cout, cout))
            if i < last:
                blocks.append(Resample(cout, "downsample3d" if temporal else "downsample2d"))
        self.downsamples = nn.ModuleList(blocks)
        c = dims[-1]
        self.middle = nn.Sequential(ResidualBlock(c, c), AttentionBlock(c), ResidualBlock(c, c))
        self.head = nn.Sequential(RMSNorm(c), nn.SiLU(), CausalConv3d(c, 2 * cfg.z_dim, 3, padding=1))
        # blocks before the first temporal resampler see frames independently of chunking
        self.stream_until = next(i for i, b in enumerate(blocks) if _is_temporal(b))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        frames = []
        for t in range(x.shape[2]):  # full-resolution stages one frame at a time (same result)
            y = self.conv1(x[:, :, t:t + 1])
            for block in self.downsamples[: self.stream_until]:
                y = _run(block, y, False)
            frames.append(y)
        x = torch.cat(frames, dim=2)
        for block in self.downsamples[self.stream_until:]:
            x = _run(block, x, False)
        return self.head(self.middle(x))


class Decoder(nn.Module):
    def __init__(self, cfg: VAEConfig):
        super().__init__()
        mults = (cfg.dim_mult[-1],) + tuple(cfg.dim_mult[::-1])
        dims = [cfg.dec_dim * m for m in mults]
        temporal_up = cfg.temporal_down[::-1]
        last = len(cfg.dim_mult) - 1
        self.conv1 = CausalConv3d(cfg.z_dim, dims[0], 3, padding=1)
        c = dims[0]
        self.middle = nn.Sequential(ResidualBlock(c, c), AttentionBlock(c), ResidualBlock(c, c))
        blocks = []
        for i, (cin, cout) in enumerate(zip(dims[:-1], dims[1:])):
            temporal = temporal_up[i] if i < last else False
            if cfg.version == "2.2":
                blocks.append(UpBlock(cin, cout, cfg.num_res_blocks + 1, temporal, up=i < last))
                continue
            if i > 0:
                cin //= 2  # the 2.1 upsamplers halve the channels
            for j in range(cfg.num_res_blocks + 1):
                blocks.append(ResidualBlock(cin if j == 0 else cout, cout))
            if i < last:
                blocks.append(Resample(cout, "upsample3d" if temporal else "upsample2d", out_dim=cout // 2))
        self.upsamples = nn.ModuleList(blocks)
        self.head = nn.Sequential(RMSNorm(dims[-1]), nn.SiLU(), CausalConv3d(dims[-1], 3 * cfg.patch ** 2, 3, padding=1))
        # blocks after the last temporal resampler are streamed one frame at a time
        self.stream_from = max(i for i, b in enumerate(blocks) if _is_temporal(b)) + 1
        # recompute each block in the backward pass (reward fine-tuning decodes with gradient). Only
        # for a single-chunk decode: a recomputed block would not see the causal cache of earlier chunks
        self.gradient_checkpointing = False

    def _block(self, block: nn.Module, x: torch.Tensor, first_chunk: bool) -> torch.Tensor:
        if self.gradient_checkpointing and torch.is_grad_enabled():
            return checkpoint(_run_fresh, block, x, first_chunk, use_reentrant=False)
        return _run(block, x, first_chunk)

    def forward(self, x: torch.Tensor, first_chunk: bool = False) -> torch.Tensor:
        x = self._block(self.middle, self.conv1(x), first_chunk)
        for block in self.upsamples[: self.stream_from]:
            x = self._block(block, x, first_chunk)
        frames = []
        for t in range(x.shape[2]):
            y = x[:, :, t:t + 1]
            for block in self.upsamples[self.stream_from:]:
                y = self._block(block, y, first_chunk)
            frames.append(self._block(self.head, y, first_chunk))
        return torch.cat(frames, dim=2)


def patchify(x: torch.Tensor, p: int) -> torch.Tensor:
    """[B, C, F, H, W] -> [B, C*p*p, F, H/p, W/p]; channel = c*p*p + (w offset)*p + (h offset)."""
    if p == 1:
        return x
    b, c, f, h, w = x.shape
    x = x.reshape(b, c, f, h // p, p, w // p, p).permute(0, 1, 6, 4, 2, 3, 5)
    return x.reshape(b, c * p * p, f, h // p, w // p)


def unpatchify(x: torch.Tensor, p: int) -> torch.Tensor:
    if p == 1:
        return x
    b, cpp, f, h, w = x.shape
    x = x.reshape(b, cpp // (p * p), p, p, f, h, w).permute(0, 1, 4, 5, 3, 6, 2)
    return x.reshape(b, cpp // (p * p), f, h * p, w * p)


class WanVAE(nn.Module):
    """Wan2.1 / Wan2.2 VAE. `encode` returns the posterior mean, `decode` a video in [-1, 1].

    Both take a `callback(done, total)` called after every time chunk (progress bars; raising
    from it interrupts). Spatial tiling for large videos lives in `vae_tiling` and is used when
    `tile` (or a `memory_budget` in bytes) is given.
    """

    def __init__(self, config: VAEConfig | None = None):
        super().__init__()
        self.config = cfg = config or VAEConfig()
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)
        self.conv1 = CausalConv3d(2 * cfg.z_dim, 2 * cfg.z_dim, 1)
        self.conv2 = CausalConv3d(cfg.z_dim, cfg.z_dim, 1)
        mean, inv_std = latent_stats(cfg)
        self.register_buffer("latent_mean", mean, persistent=False)
        self.register_buffer("latent_inv_std", inv_std, persistent=False)

    @property
    def dtype(self) -> torch.dtype:
        return self.conv1.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.conv1.weight.device

    # --- normalization (what the DiT consumes) ---
    def normalize(self, mu: torch.Tensor) -> torch.Tensor:
        return (mu - self.latent_mean.to(mu.device, mu.dtype)) * self.latent_inv_std.to(mu.device, mu.dtype)

    def denormalize(self, z: torch.Tensor) -> torch.Tensor:
        return z / self.latent_inv_std.to(z.device, z.dtype) + self.latent_mean.to(z.device, z.dtype)

    # --- shapes ---
    def latent_shape(self, video_shape) -> tuple:
        b, _, f, h, w = video_shape
        st, sh, sw = self.config.stride
        return (b, self.config.z_dim, (f - 1) // st + 1, h // sh, w // sw)

    def check_video(self, video: torch.Tensor) -> None:
        if not torch.is_tensor(video) or video.ndim != 5 or video.shape[1] != 3:
            found = tuple(video.shape) if torch.is_tensor(video) else type(video).__name__
            raise ValueError(f"VAE encode: expected a video [B, 3, F, H, W] in [-1, 1], found {found}")
        f, h, w = video.shape[2:]
        st, s, _ = self.config.stride
        if (f - 1) % st:
            raise ValueError(f"VAE encode: the frame count must be 1 + {st}k (1, 5, 9, ..., 81), found {f}")
        if h % s or w % s:
            raise ValueError(f"VAE encode: height and width must be multiples of {s} for the Wan{self.config.version} "
                             f"VAE, found {h}x{w}")

    def check_latent(self, latent: torch.Tensor) -> None:
        z = self.config.z_dim
        if not torch.is_tensor(latent) or latent.ndim != 5 or latent.shape[1] != z:
            found = tuple(latent.shape) if torch.is_tensor(latent) else type(latent).__name__
            other = vae_for_latent(latent.shape[1] if torch.is_tensor(latent) and latent.ndim == 5 else -1)
            hint = f" (a {other.name} latent: use the {other.name} VAE)" if other else ""
            raise ValueError(f"VAE decode: expected a latent [B, {z}, T, h, w] for the Wan{self.config.version} VAE, "
                             f"found {found}{hint}")

    # --- state ---
    def reset_history(self) -> None:
        for m in self.modules():
            if isinstance(m, CausalConv3d):
                m.history = None
            elif isinstance(m, Resample):
                m.state = None

    # --- encode / decode ---
    @torch.no_grad()
    def encode(self, video: torch.Tensor, *, normalized: bool = True, tile: tuple | None = None,
               memory_budget: int | None = None, callback=None) -> torch.Tensor:
        """[B, 3, F, H, W] in [-1, 1] -> posterior mean [B, z, 1 + (F-1)/4, H/s, W/s] (normalized by default)."""
        self.check_video(video)
        tile = tile or choose_tile(self, video.shape, memory_budget, "encode")
        if tile is not None:
            mu = tiled_encode(self, video, tile, callback)
        else:
            mu = self.encode_untiled(video, callback)
        return self.normalize(mu) if normalized else mu

    @torch.no_grad()
    def decode(self, latent: torch.Tensor, *, normalized: bool = True, tile: tuple | None = None,
               memory_budget: int | None = None, callback=None) -> torch.Tensor:
        """[B, z, T, h, w] -> video [B, 3, 1 + 4(T-1), h*s, w*s] clamped to [-1, 1]."""
        self.check_latent(latent)
        z = self.denormalize(latent) if normalized else latent
        tile = tile or choose_tile(self, z.shape, memory_budget, "decode")
        if tile is not None:
            return tiled_decode(self, z, tile, callback)
        return self.decode_untiled(z, callback)

    def decode_with_grad(self, latent: torch.Tensor, *, normalized: bool = True, tile: tuple | None = None,
                         checkpointed: bool = True) -> torch.Tensor:
        """`decode` that carries gradient to the latent (reward fine-tuning; the weights stay frozen,
        clipped pixels get no gradient). With `checkpointed`, the decoder recomputes each block in the backward
        pass instead of keeping its activations; with `tile` (latent pixels) it decodes tile by tile,
        so the backward holds one block of one tile at a time."""
        self.check_latent(latent)
        z = self.denormalize(latent.float()) if normalized else latent
        was = self.decoder.gradient_checkpointing
        self.decoder.gradient_checkpointing = checkpointed
        try:
            return self.decode_untiled(z) if tile is None else tiled_decode(self, z, tile)
        finally:
            self.decoder.gradient_checkpointing = was

    def encode_untiled(self, video: torch.Tensor, callback=None, progress_offset: int = 0, progress_total=None):
        x = patchify(video.to(self.device, self.dtype), self.config.patch)
        n = 1 + (x.shape[2] - 1) // 4
        self.reset_history()
        try:
            out = []
            for i in range(n):
                chunk = x[:, :, :1] if i == 0 else x[:, :, 1 + 4 * (i - 1): 1 + 4 * i]
                out.append(self.encoder(chunk))
                if callback is not None:
                    callback(progress_offset + i + 1, progress_total or n)
        finally:
            self.reset_history()
        mu = self.conv1(torch.cat(out, dim=2))[:, : self.config.z_dim]
        return mu.float()

    def decode_untiled(self, z: torch.Tensor, callback=None, progress_offset: int = 0, progress_total=None):
        x = self.conv2(z.to(self.device, self.dtype))
        n = x.shape[2]
        video = None  # filled chunk by chunk: no list of chunks plus a concatenated copy
        self.reset_history()
        try:
            for i in range(n):
                frames = unpatchify(self.decoder(x[:, :, i:i + 1], first_chunk=i == 0), self.config.patch)
                if video is None:
                    video = frames.new_empty(*frames.shape[:2], 1 + self.config.stride[0] * (n - 1), *frames.shape[3:],
                                             dtype=torch.float32)
                    done = 0
                video[:, :, done:done + frames.shape[2]] = frames
                done += frames.shape[2]
                if callback is not None:
                    callback(progress_offset + i + 1, progress_total or n)
        finally:
            self.reset_history()
        return video.clamp_(-1.0, 1.0)

    # --- pairing with a DiT ---
    def check_compatible(self, dit_config) -> None:
        """A clear error when this VAE cannot serve the given DiT (e.g. a 2.2 VAE with a 2.1 model)."""
        out_dim = dit_config.out_dim
        if out_dim != self.config.z_dim:
            spec = vae_for_latent(out_dim)
            need = spec.describe() if spec else f"{out_dim}-channel VAE"
            variant = getattr(dit_config, "variant", "") or dit_config.model_type
            raise ValueError(f"the DiT ({variant}) works on {out_dim}-channel latents and needs the {need}; "
                             f"found the Wan{self.config.version} VAE ({self.config.z_dim} channels)")


def latent_stats(cfg: VAEConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, 1/std) as [1, z, 1, 1, 1] fp32. Tiny test models cycle the released statistics."""
    mean, std = LATENT_MEAN[cfg.version], LATENT_STD[cfg.version]
    idx = [i % len(mean) for i in range(cfg.z_dim)]
    mean = torch.tensor([mean[i] for i in idx], dtype=torch.float32)
    inv_std = 1.0 / torch.tensor([std[i] for i in idx], dtype=torch.float32)
    return mean.view(1, -1, 1, 1, 1), inv_std.view(1, -1, 1, 1, 1)


def _triple(v) -> tuple:
    return tuple(v) if isinstance(v, (tuple, list)) else (v, v, v)


def _stats_for(latent: torch.Tensor):
    spec = vae_for_latent(latent.shape[1]) if latent.ndim == 5 else None
    if spec is None:
        raise ValueError(f"expected a Wan video latent [B, {latent_channel_choices()}, T, h, w]; "
                         f"found shape {tuple(latent.shape)}")
    mean, inv_std = latent_stats(VAEConfig.released(spec.version))
    return mean.to(latent.device, latent.dtype), inv_std.to(latent.device, latent.dtype)


def normalize_latent(raw: torch.Tensor) -> torch.Tensor:
    """Raw VAE latent (ComfyUI's LATENT convention) -> the normalized latent the DiT works on."""
    mean, inv_std = _stats_for(raw)
    return (raw - mean) * inv_std


def denormalize_latent(z: torch.Tensor) -> torch.Tensor:
    mean, inv_std = _stats_for(z)
    return z / inv_std + mean
