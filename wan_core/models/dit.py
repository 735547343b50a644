"""The Wan diffusion transformer (Wan 2.1 T2V/I2V/FLF2V, Wan 2.2 A14B experts and TI2V-5B).

One module covers every released variant; parameter names are exactly the official ones
(`Wan2.1/2.2: wan/modules/model.py`), so official state dicts load with strict checking.

Numerics follow the official implementation (docs/architecture.md §2–§7):
  * sinusoidal timestep embedding and 3-D RoPE are computed in float64;
  * the time MLPs, the modulation tables, the gated residual adds and the output head run in fp32,
    and the residual stream stays fp32 whatever the compute dtype;
  * Linear/Conv layers run in the compute dtype (the dtype of `patch_embedding.weight`, or
    `model.compute_dtype` when weights are stored in a smaller dtype - see `CastLinear`).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from .attention import attention
from .layers import CastConv3d, CastLinear

MODEL_TYPES = ("t2v", "i2v", "flf2v", "ti2v")
CLIP_DIM = 1280  # width of the CLIP ViT-H features fed to img_emb (fixed by the released models)
FLF_IMAGE_TOKENS = 514  # 2 images x 257 CLIP tokens
PATCH_SIZE = (1, 2, 2)  # latent pixels per token (frames, height, width) in every released Wan DiT


@dataclass
class WanConfig:
    """Architecture of a Wan DiT. Field names follow the official config.json."""

    model_type: str = "t2v"  # t2v | i2v | flf2v | ti2v (Wan2.2 I2V-A14B is i2v without image branch)
    dim: int = 1536
    ffn_dim: int = 8960
    num_heads: int = 12
    num_layers: int = 30
    in_dim: int = 16
    out_dim: int = 16
    text_dim: int = 4096
    freq_dim: int = 256
    text_len: int = 512
    eps: float = 1e-6
    patch_size: tuple = PATCH_SIZE
    image_branch: bool = False  # Wan2.1 I2V/FLF2V: img_emb + k_img/v_img in every cross-attention
    flf_pos_tokens: int = 0  # FLF2V: length of img_emb.emb_pos (514), else 0
    variant: str = ""  # human-readable release name, e.g. "wan2.1-t2v-1.3b"
    extras: dict = field(default_factory=dict)  # free-form notes from detection (expert, file hints)

    def __post_init__(self):
        self.patch_size = tuple(self.patch_size)
        if self.model_type not in MODEL_TYPES:
            raise ValueError(f"model_type must be one of {MODEL_TYPES}, got {self.model_type!r}")
        if self.dim % self.num_heads or (self.dim // self.num_heads) % 2:
            raise ValueError(
                f"dim {self.dim} must split into {self.num_heads} heads of even width "
                f"(head_dim = dim / num_heads = {self.dim / self.num_heads})"
            )

    @property
    def head_dim(self) -> int:
        return self.dim // self.num_heads

    def as_dict(self) -> dict:
        return asdict(self)

    def __getitem__(self, key):  # lets callers treat the config like the official dict
        return getattr(self, key)

    @classmethod
    def from_dict(cls, d: dict) -> "WanConfig":
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown Wan config field(s) {unknown}; known: {sorted(names)}")
        return cls(**d)


# --------------------------------------------------------------------------------------------
# Layers that run in the compute dtype whatever dtype the weight is stored in
# --------------------------------------------------------------------------------------------


class RMSNorm(nn.Module):
    """Wan's RMSNorm: normalise in fp32, cast back to the input dtype, then scale by the weight."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # F.rms_norm is one fused pass and computes in fp32 for 16-bit inputs
        if x.dtype == torch.float32:
            return F.rms_norm(x, (x.shape[-1],), self.weight.float(), self.eps)
        # 16-bit: round to x's dtype *before* the weight multiply, as upstream does
        return F.rms_norm(x, (x.shape[-1],), None, self.eps) * self.weight.to(x.dtype)


def layer_norm_fp32(norm: nn.LayerNorm, x: torch.Tensor) -> torch.Tensor:
    """LayerNorm computed in fp32 (affine parameters, if any, upcast)."""
    w = None if norm.weight is None else norm.weight.float()
    b = None if norm.bias is None else norm.bias.float()
    return F.layer_norm(x.float(), norm.normalized_shape, w, b, norm.eps)


# --------------------------------------------------------------------------------------------
# Positional and timestep embeddings (float64, as upstream)
# --------------------------------------------------------------------------------------------


def sinusoidal_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """[..., ] timesteps -> [..., dim] as [cos, sin] with frequencies 10000^(-i/half), in float64."""
    half = dim // 2
    freqs = torch.pow(10000.0, -torch.arange(half, dtype=torch.float64, device=t.device) / half)
    args = t.to(torch.float64).unsqueeze(-1) * freqs
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


def rope_axis_pairs(head_dim: int) -> tuple[int, int, int]:
    """Complex pairs per axis (t, h, w): h and w get floor(d/6) each, time the remainder."""
    hw = head_dim // 6
    return head_dim // 2 - 2 * hw, hw, hw


def rope_angles(grid: tuple[int, int, int], head_dim: int, device=None) -> torch.Tensor:
    """float64 rotation angles [L, head_dim/2] for a (T, h, w) token grid, tokens in (t, h, w) order."""
    parts = []
    for axis, (pairs, n) in enumerate(zip(rope_axis_pairs(head_dim), grid)):
        # each axis uses its own real width 2*pairs in the exponent
        theta = torch.pow(10000.0, -torch.arange(pairs, dtype=torch.float64, device=device) * 2 / (2 * pairs))
        angles = torch.outer(torch.arange(n, dtype=torch.float64, device=device), theta)
        shape = [1, 1, 1, pairs]
        shape[axis] = n
        parts.append(angles.view(shape).expand(*grid, pairs))
    return torch.cat(parts, dim=-1).reshape(-1, head_dim // 2)


def rope_frequencies(grid: tuple[int, int, int], head_dim: int, device=None) -> torch.Tensor:
    """Complex128 rotation factors [L, 1, head_dim/2] (the official table; kept for tests and reference)."""
    angles = rope_angles(grid, head_dim, device)
    return torch.polar(torch.ones_like(angles), angles).unsqueeze(1)


def rope_tables(grid: tuple[int, int, int], head_dim: int, device=None, dtype=torch.float64):
    """(cos, signed sin) [L, 1, head_dim] for `apply_rope`, computed in float64, stored in `dtype`.

    Pair j occupies real elements (2j, 2j+1): cos is repeated on both, sin is stored as (-sin, +sin)
    so that rotation = x * cos + swap_pairs(x) * sin.
    """
    angles = rope_angles(grid, head_dim, device)
    cos = angles.cos().repeat_interleave(2, dim=-1)
    sin = torch.stack([-angles.sin(), angles.sin()], dim=-1).flatten(-2)
    return cos.to(dtype).unsqueeze(1), sin.to(dtype).unsqueeze(1)


def apply_rope(x: torch.Tensor, tables: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """Rotate interleaved pairs (2j, 2j+1) of x [B, L, heads, head_dim] in the tables' dtype.

    Same arithmetic as upstream's complex multiply, written with real tensors (cheaper than
    view_as_complex round trips). The model passes float64 tables when it computes in fp32, as
    upstream does, and fp32 tables in 16-bit modes, where the extra precision is lost anyway.
    """
    cos, sin = tables
    xm = x.to(cos.dtype)
    swapped = xm.unflatten(-1, (-1, 2)).flip(-1).flatten(-2)  # (x1, x0) per pair
    return torch.addcmul(xm * cos, swapped, sin).to(x.dtype)


# --------------------------------------------------------------------------------------------
# Blocks
# --------------------------------------------------------------------------------------------


class SelfAttention(nn.Module):
    def __init__(self, dim: int, num_heads: int, eps: float):
        super().__init__()
        self.num_heads = num_heads
        self.q, self.k, self.v, self.o = (CastLinear(dim, dim) for _ in range(4))
        self.norm_q = RMSNorm(dim, eps)  # over the full width, before the head split
        self.norm_k = RMSNorm(dim, eps)

    def forward(self, x: torch.Tensor, freqs: torch.Tensor) -> torch.Tensor:
        heads = (self.num_heads, -1)
        q = apply_rope(self.norm_q(self.q(x)).unflatten(-1, heads), freqs)
        k = apply_rope(self.norm_k(self.k(x)).unflatten(-1, heads), freqs)
        v = self.v(x).unflatten(-1, heads)
        return self.o(attention(q, k, v).flatten(-2))


class CrossAttention(nn.Module):
    """Text cross-attention; Wan2.1 I2V/FLF2V add a second attention over CLIP image tokens."""

    def __init__(self, dim: int, num_heads: int, eps: float, image_branch: bool):
        super().__init__()
        self.num_heads = num_heads
        self.q, self.k, self.v, self.o = (CastLinear(dim, dim) for _ in range(4))
        self.norm_q = RMSNorm(dim, eps)
        self.norm_k = RMSNorm(dim, eps)
        if image_branch:
            self.k_img = CastLinear(dim, dim)
            self.v_img = CastLinear(dim, dim)
            self.norm_k_img = RMSNorm(dim, eps)

    def forward(self, x: torch.Tensor, context: torch.Tensor, image_context: torch.Tensor | None) -> torch.Tensor:
        heads = (self.num_heads, -1)
        q = self.norm_q(self.q(x)).unflatten(-1, heads)
        k = self.norm_k(self.k(context)).unflatten(-1, heads)
        out = attention(q, k, self.v(context).unflatten(-1, heads))
        if image_context is not None:
            k_img = self.norm_k_img(self.k_img(image_context)).unflatten(-1, heads)
            # the two attention outputs are summed before the shared output projection
            out = out + attention(q, k_img, self.v_img(image_context).unflatten(-1, heads))
        return self.o(out.flatten(-2))


class WanBlock(nn.Module):
    def __init__(self, cfg: WanConfig):
        super().__init__()
        dim = cfg.dim
        self.norm1 = nn.LayerNorm(dim, eps=cfg.eps, elementwise_affine=False)
        self.self_attn = SelfAttention(dim, cfg.num_heads, cfg.eps)
        self.norm3 = nn.LayerNorm(dim, eps=cfg.eps, elementwise_affine=True)  # cross-attention pre-norm
        self.cross_attn = CrossAttention(dim, cfg.num_heads, cfg.eps, cfg.image_branch)
        self.norm2 = nn.LayerNorm(dim, eps=cfg.eps, elementwise_affine=False)
        self.ffn = nn.Sequential(CastLinear(dim, cfg.ffn_dim), nn.GELU(approximate="tanh"), CastLinear(cfg.ffn_dim, dim))
        self.modulation = nn.Parameter(torch.zeros(1, 6, dim))

    def forward(self, x, e0, context, image_context, freqs, compute_dtype):
        # x: [B, L, dim] fp32; e0: [B, 1 or L, 6, dim] fp32
        shift_sa, scale_sa, gate_sa, shift_ff, scale_ff, gate_ff = (self.modulation.float() + e0).unbind(-2)

        # addcmul: one fused pass for "a * b + c" (same rounding as the two-op form up to FMA)
        h = torch.addcmul(shift_sa, layer_norm_fp32(self.norm1, x), 1 + scale_sa)
        x = torch.addcmul(x, self.self_attn(h.to(compute_dtype), freqs).float(), gate_sa)

        h = layer_norm_fp32(self.norm3, x).to(compute_dtype)
        x = x + self.cross_attn(h, context, image_context).float()  # cross-attention is not gated

        h = torch.addcmul(shift_ff, layer_norm_fp32(self.norm2, x), 1 + scale_ff)
        return torch.addcmul(x, self.ffn(h.to(compute_dtype)).float(), gate_ff)


class Head(nn.Module):
    def __init__(self, cfg: WanConfig):
        super().__init__()
        self.norm = nn.LayerNorm(cfg.dim, eps=cfg.eps, elementwise_affine=False)
        self.head = CastLinear(cfg.dim, cfg.out_dim * math.prod(cfg.patch_size))
        self.modulation = nn.Parameter(torch.zeros(1, 2, cfg.dim))

    def forward(self, x: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        # e: [B, 1 or L, dim] fp32 (pre-SiLU time embedding); the whole head runs in fp32
        shift, scale = (self.modulation.float().unsqueeze(0) + e.unsqueeze(2)).unbind(2)
        return self.head(layer_norm_fp32(self.norm, x) * (1 + scale) + shift)


class ImageEmbedding(nn.Module):
    """CLIP ViT-H penultimate features [B, 257 or 514, 1280] -> image context tokens [B, N, dim]."""

    def __init__(self, dim: int, flf_pos_tokens: int):
        super().__init__()
        self.proj = nn.Sequential(
            nn.LayerNorm(CLIP_DIM),  # eps 1e-5, affine
            CastLinear(CLIP_DIM, CLIP_DIM),
            nn.GELU(),  # exact erf GELU here, unlike the tanh GELU elsewhere
            CastLinear(CLIP_DIM, dim),
            nn.LayerNorm(dim),
        )
        if flf_pos_tokens:
            self.emb_pos = nn.Parameter(torch.zeros(1, flf_pos_tokens, CLIP_DIM))

    def forward(self, clip_fea: torch.Tensor, compute_dtype: torch.dtype) -> torch.Tensor:
        if hasattr(self, "emb_pos"):
            clip_fea = clip_fea + self.emb_pos[:, : clip_fea.shape[1]].to(clip_fea.dtype)
        ln_in, fc1, act, fc2, ln_out = self.proj
        h = act(fc1(layer_norm_fp32(ln_in, clip_fea).to(compute_dtype)))
        return layer_norm_fp32(ln_out, fc2(h)).to(compute_dtype)


# --------------------------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------------------------


class WanDiT(nn.Module):
    """Wan diffusion transformer. See `forward` for the calling convention."""

    def __init__(self, config: WanConfig | dict):
        super().__init__()
        cfg = config if isinstance(config, WanConfig) else WanConfig.from_dict(config)
        self.config = cfg
        dim = cfg.dim
        self.patch_embedding = CastConv3d(cfg.in_dim, dim, kernel_size=cfg.patch_size, stride=cfg.patch_size)
        self.text_embedding = nn.Sequential(
            CastLinear(cfg.text_dim, dim), nn.GELU(approximate="tanh"), CastLinear(dim, dim)
        )
        self.time_embedding = nn.Sequential(CastLinear(cfg.freq_dim, dim), nn.SiLU(), CastLinear(dim, dim))
        self.time_projection = nn.Sequential(nn.SiLU(), CastLinear(dim, dim * 6))
        self.blocks = nn.ModuleList(WanBlock(cfg) for _ in range(cfg.num_layers))
        self.head = Head(cfg)
        if cfg.image_branch:
            self.img_emb = ImageEmbedding(dim, cfg.flf_pos_tokens)
        # set by the loader when weights are stored in a smaller dtype than the one to compute in
        self.compute_dtype_override: torch.dtype | None = None
        # training: recompute each block in the backward pass instead of keeping its activations
        self.gradient_checkpointing = False
        self._rope_cache: dict = {}

    @property
    def compute_dtype(self) -> torch.dtype:
        if self.compute_dtype_override is not None:
            return self.compute_dtype_override
        dtype = self.patch_embedding.weight.dtype
        return dtype if dtype.is_floating_point and dtype.itemsize >= 2 else torch.bfloat16

    def _rope(self, grid, device) -> tuple[torch.Tensor, torch.Tensor]:
        # float64 rotation in fp32 mode (official numerics); fp32 is plenty for 16-bit compute
        math_dtype = torch.float64 if self.compute_dtype == torch.float32 else torch.float32
        key = (tuple(grid), str(device), math_dtype)
        if key not in self._rope_cache:
            self._rope_cache = {key: rope_tables(grid, self.config.head_dim, device, math_dtype)}
        return self._rope_cache[key]

    def _time_embedding(self, timestep: torch.Tensor):
        """timestep [B] or [B, L] -> e [B, 1|L, dim], e0 [B, 1|L, 6, dim], both fp32."""
        t = timestep if timestep.ndim == 2 else timestep[:, None]
        # per-token timesteps take few distinct values (TI2V: 0 and t): embed each value once
        values, inverse = torch.unique(t, return_inverse=True)
        s = sinusoidal_embedding(values, self.config.freq_dim).float()
        e = self.time_embedding(s)
        e0 = self.time_projection(e).unflatten(-1, (6, self.config.dim))
        return e[inverse], e0[inverse]

    def forward(
        self,
        x: torch.Tensor,
        timestep: torch.Tensor,
        context: torch.Tensor,
        *,
        clip_fea: torch.Tensor | None = None,
        y: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Predict the flow velocity (noise - x0).

        x: [B, C, F, H, W] noisy normalized latent; timestep: [B] on the 0..1000 scale or [B, L] per
        token (TI2V); context: [B, L_text, text_dim] text embeddings zero-padded beyond each prompt
        (padded to text_len here, not masked - like the official model); clip_fea: [B, 257|514, 1280]
        (Wan2.1 I2V/FLF2V); y: [B, C_y, F, H, W] conditioning concatenated on channels.
        Returns [B, out_dim, F, H, W] in fp32.
        """
        cfg = self.config
        cdtype = self.compute_dtype
        self._check_inputs(x, timestep, context, clip_fea, y)
        if y is not None:
            x = torch.cat([x, y.to(x.dtype)], dim=1)
        B = x.shape[0]
        pt, ph, pw = cfg.patch_size
        grid = (x.shape[2] // pt, x.shape[3] // ph, x.shape[4] // pw)

        h = self.patch_embedding(x.to(cdtype)).flatten(2).transpose(1, 2).float()  # [B, L, dim]
        freqs = self._rope(grid, x.device)

        t = timestep.to(x.device)
        if t.ndim == 0:
            t = t.expand(B)
        e, e0 = self._time_embedding(t)

        if context.shape[1] < cfg.text_len:  # zero rows, embedded and attended like real tokens
            context = F.pad(context, (0, 0, 0, cfg.text_len - context.shape[1]))
        context = self.text_embedding(context.to(cdtype))
        image_context = self.img_emb(clip_fea.to(cdtype), cdtype) if clip_fea is not None else None

        checkpointed = self.gradient_checkpointing and torch.is_grad_enabled()
        for block in self.blocks:
            if checkpointed:
                h = checkpoint(block, h, e0, context, image_context, freqs, cdtype, use_reentrant=False)
            else:
                h = block(h, e0, context, image_context, freqs, cdtype)

        out = self.head(h, e)  # [B, L, out_dim * prod(patch)]
        out = out.view(B, *grid, pt, ph, pw, cfg.out_dim)
        out = out.permute(0, 7, 1, 4, 2, 5, 3, 6).reshape(B, cfg.out_dim, grid[0] * pt, grid[1] * ph, grid[2] * pw)
        return out.float()

    def _check_inputs(self, x, timestep, context, clip_fea, y):
        cfg = self.config
        if x.ndim != 5:
            raise ValueError(f"x must be [B, C, F, H, W], got shape {tuple(x.shape)}")
        channels = x.shape[1] + (0 if y is None else y.shape[1])
        if channels != cfg.in_dim:
            need = f"{cfg.in_dim} input channels"
            if cfg.in_dim == 36 and y is None:
                need += " (16 latent + 20 from y = mask(4) + image latent(16)): pass y"
            raise ValueError(f"{cfg.variant or 'model'} expects {need}; got {channels}")
        _, _, f, hh, ww = x.shape
        pt, ph, pw = cfg.patch_size
        if f % pt or hh % ph or ww % pw:
            raise ValueError(f"latent F, H, W must be multiples of the patch size {cfg.patch_size}; got {f, hh, ww}")
        if context.ndim != 3 or context.shape[-1] != cfg.text_dim:
            raise ValueError(f"context must be [B, L_text, {cfg.text_dim}], got shape {tuple(context.shape)}")
        if clip_fea is not None and not cfg.image_branch:
            raise ValueError(f"{cfg.variant or cfg.model_type} has no image branch (no img_emb): do not pass clip_fea")
        if cfg.image_branch and clip_fea is None:
            raise ValueError(f"{cfg.variant or cfg.model_type} needs clip_fea [B, 257 or 514, {CLIP_DIM}]")
        if timestep.ndim == 2 and timestep.shape[1] != (f // pt) * (hh // ph) * (ww // pw):
            raise ValueError(
                f"per-token timestep must be [B, L] with L = {(f // pt) * (hh // ph) * (ww // pw)} tokens, "
                f"got {tuple(timestep.shape)}"
            )
