"""Spatial tiling for the Wan VAEs: bounded memory on long or large clips.

The video (encode) or latent (decode) is cut into overlapping spatial tiles; each tile goes
through the full causal chunk loop on its own, and the results are blended with linear ramps
across the overlaps. Memory then scales with the tile, not the frame size. Tiled output is not
bit-identical to untiled output (the convs see zero padding at tile borders); the overlap keeps
the seams invisible and the difference small (tests and the benchmark report it).

Tile sizes are in latent pixels for both directions. `choose_tile` picks the largest tile whose
estimated peak fits a memory budget.
"""
from __future__ import annotations

import math

import torch

# Working memory of the chunk loop, in elements per pixel of one output frame (decode) or input
# frame (encode), fp32, released widths. Measured on the CPU with bench/bench_vae.py: 2.1 decode
# 3.5k (832x480, rounded up to 4k), 2.2 decode 3.0k (416x256). About 60 % of it is the causal
# history (two frames per cached conv), the rest the activations of one chunk. The encode figures
# are estimates from the same count (not measured yet).
PEAK_ELEMENTS_PER_PIXEL = {("2.1", "decode"): 4000.0, ("2.1", "encode"): 2500.0,
                           ("2.2", "decode"): 3000.0, ("2.2", "encode"): 2000.0}
MIN_TILE = 8  # latent pixels; smaller tiles are mostly overlap


def estimate_peak_bytes(vae, latent_hw: tuple[int, int], mode: str = "decode") -> int:
    """Estimated working memory of one clip (activations and history; not weights, not the output)."""
    cfg = vae.config
    s = cfg.stride[1]
    pixels = latent_hw[0] * latent_hw[1] * s * s
    elem = torch.finfo(vae.dtype).bits // 8
    return int(PEAK_ELEMENTS_PER_PIXEL[cfg.version, mode] * pixels * elem * cfg.width_ratio)


def choose_tile(vae, shape, memory_budget: int | None, mode: str) -> tuple[int, int] | None:
    """Largest latent tile whose working memory fits `memory_budget` bytes next to the output;
    None when the whole frame fits (or no budget is given)."""
    if memory_budget is None:
        return None
    s = vae.config.stride[1]
    batch, h, w = shape[0], shape[-2], shape[-1]
    fixed = 0
    if mode == "encode":
        h, w = h // s, w // s
    else:  # the decoded video is allocated in full whether tiled or not (fp32, plus blend weights)
        fixed = batch * 3 * (1 + vae.config.stride[0] * (shape[2] - 1)) * h * w * s * s * 4
    available = memory_budget - fixed
    if estimate_peak_bytes(vae, (h, w), mode) * batch <= available:
        return None
    side = max(h, w)
    while side > MIN_TILE and estimate_peak_bytes(vae, (min(side, h), min(side, w)), mode) * batch > available:
        side -= 2
    return (min(side, h), min(side, w))


def tile_starts(size: int, tile: int, overlap: int) -> list[int]:
    """Start offsets covering [0, size) with tiles of `tile` overlapping by at least `overlap`."""
    if tile >= size:
        return [0]
    n = math.ceil((size - overlap) / (tile - overlap))
    step = (size - tile) / (n - 1)
    return [round(i * step) for i in range(n)]


def _ramp(length: int, start: int, end: int, size: int, overlap: int) -> torch.Tensor:
    """1-D blend weight of one tile: rises over the overlap at inner edges, flat elsewhere."""
    w = torch.ones(length)
    if overlap > 0:
        ramp = torch.arange(1, overlap + 1, dtype=torch.float32) / (overlap + 1)
        if start > 0:
            w[:overlap] = ramp[:length]
        if end < size:
            w[-overlap:] = torch.minimum(w[-overlap:], ramp.flip(0)[-length:])
    return w


def _default_overlap(tile: int) -> int:
    return max(1, tile // 4)


def _tiles(h: int, w: int, tile: tuple[int, int]):
    th, tw = min(tile[0], h), min(tile[1], w)
    oh, ow = _default_overlap(th) if th < h else 0, _default_overlap(tw) if tw < w else 0
    return [(y, x, th, tw, oh, ow) for y in tile_starts(h, th, oh) for x in tile_starts(w, tw, ow)]


def _blend(out: torch.Tensor | None, weight: torch.Tensor | None, piece: torch.Tensor, y: int, x: int,
           overlap_hw: tuple[int, int], full_hw: tuple[int, int]):
    """Accumulate `piece` at (y, x) with its ramp weights (all in output pixels)."""
    H, W = full_hw
    ph, pw = piece.shape[-2:]
    wy = _ramp(ph, y, y + ph, H, overlap_hw[0])
    wx = _ramp(pw, x, x + pw, W, overlap_hw[1])
    wgt = (wy[:, None] * wx[None, :]).to(piece.device)
    if out is None:
        out = piece.new_zeros(*piece.shape[:-2], H, W)
        weight = piece.new_zeros(H, W)
    out[..., y: y + ph, x: x + pw] += piece * wgt
    weight[y: y + ph, x: x + pw] += wgt
    return out, weight


def _run_tiles(run, source: torch.Tensor, tile: tuple[int, int], in_scale: int, out_scale: int,
               chunks: int, callback=None) -> torch.Tensor:
    """Apply `run(piece, callback, progress_offset, progress_total)` tile by tile and blend.
    Tiles are laid out on the latent grid; `in_scale` / `out_scale` are source / result pixels per
    latent pixel (decode: 1 / stride, encode: stride / 1)."""
    h, w = source.shape[-2] // in_scale, source.shape[-1] // in_scale
    tiles = _tiles(h, w, tile)
    out = weight = None
    for i, (y, x, th, tw, oh, ow) in enumerate(tiles):
        piece = run(source[..., y * in_scale:(y + th) * in_scale, x * in_scale:(x + tw) * in_scale],
                    callback, i * chunks, len(tiles) * chunks)
        out, weight = _blend(out, weight, piece, y * out_scale, x * out_scale, (oh * out_scale, ow * out_scale),
                             (h * out_scale, w * out_scale))
    return out / weight


def tiled_decode(vae, z: torch.Tensor, tile: tuple[int, int], callback=None) -> torch.Tensor:
    """Decode un-normalized latents tile by tile; -> video in [-1, 1]."""
    video = _run_tiles(vae.decode_untiled, z, tile, 1, vae.config.stride[1], z.shape[2], callback)
    return video.clamp_(-1.0, 1.0)


def tiled_encode(vae, video: torch.Tensor, tile: tuple[int, int], callback=None) -> torch.Tensor:
    """Encode a [-1, 1] video tile by tile; -> un-normalized posterior mean."""
    chunks = 1 + (video.shape[2] - 1) // 4
    return _run_tiles(vae.encode_untiled, video, tile, vae.config.stride[1], 1, chunks, callback)
