"""Latent -> RGB previews: the linear projection, frame/batch choice, [-1, 1] -> [0, 255] mapping, errors."""
import numpy as np
import pytest
import torch
from PIL import Image

from wan_core.generation.preview import (
    WAN21_RGB_BIAS,
    WAN21_RGB_FACTORS,
    WAN22_RGB_BIAS,
    WAN22_RGB_FACTORS,
    latent_rgb_preview,
    rgb_projection,
)


def expected_pixels(latent, factors, bias):
    """Independent computation, in float64 and per channel sum, of the preview of latent[0, :, 0]."""
    frame = latent[0, :, 0].double().numpy()                             # [C, h, w]
    table = np.array(factors, dtype=np.float64)                          # [C, 3]
    rgb = np.stack([sum(table[c, k] * frame[c] for c in range(table.shape[0])) + bias[k] for k in range(3)], -1)
    return np.clip(np.round((rgb + 1) / 2 * 255), 0, 255)


def as_array(image):
    assert isinstance(image, Image.Image) and image.mode == "RGB"
    return np.asarray(image).astype(np.float64)


def test_tables_have_the_wan_shapes():
    assert np.array(WAN21_RGB_FACTORS).shape == (16, 3) and len(WAN21_RGB_BIAS) == 3
    assert np.array(WAN22_RGB_FACTORS).shape == (48, 3) and len(WAN22_RGB_BIAS) == 3
    factors, bias = rgb_projection(16)
    assert factors.dtype == torch.float32 and factors.shape == (16, 3) and bias.shape == (3,)


@pytest.mark.parametrize("channels,factors,bias", [(16, WAN21_RGB_FACTORS, WAN21_RGB_BIAS),
                                                   (48, WAN22_RGB_FACTORS, WAN22_RGB_BIAS)])
def test_matches_an_independent_projection(channels, factors, bias):
    latent = torch.randn(2, channels, 3, 6, 10, generator=torch.Generator().manual_seed(channels))
    image = latent_rgb_preview(latent)
    assert image.size == (10, 6)  # (w, h)
    got, want = as_array(image), expected_pixels(latent, factors, bias)
    # float32 vs float64 may round a value sitting on a .5 boundary the other way: at most 1 level
    assert np.abs(got - want).max() <= 1 and (got == want).mean() > 0.99
    assert len(np.unique(got)) > 20  # a real image, not a constant


def test_uses_video_0_frame_0_only():
    latent = torch.randn(2, 16, 3, 4, 5, generator=torch.Generator().manual_seed(1))
    before = as_array(latent_rgb_preview(latent))
    changed = latent.clone()
    changed[:, :, 1:] = torch.randn(2, 16, 2, 4, 5)   # other latent frames
    changed[1] = 10.0                                  # the other video
    assert np.array_equal(as_array(latent_rgb_preview(changed)), before)
    changed[0, 3, 0, 2, 1] += 1.0                      # one pixel of the shown frame
    diff = np.abs(as_array(latent_rgb_preview(changed)) - before).sum(-1)
    assert diff[2, 1] > 0 and diff.sum() == diff[2, 1]


def test_bias_and_clamping():
    zero = latent_rgb_preview(torch.zeros(1, 16, 1, 2, 3))
    bias = np.round((np.array(WAN21_RGB_BIAS) + 1) * 127.5)
    assert np.array_equal(as_array(zero), np.broadcast_to(bias, (2, 3, 3)))
    # channel 2 has positive weights for R, G and B: large values saturate at 255, negative ones at 0
    big = torch.zeros(1, 16, 1, 2, 2)
    big[0, 2, 0, 0] = 100.0
    big[0, 2, 0, 1] = -100.0
    pixels = as_array(latent_rgb_preview(big))
    assert (pixels[0] == 255).all() and (pixels[1] == 0).all()
    assert np.asarray(latent_rgb_preview(big)).dtype == np.uint8


def test_dtypes_and_non_finite_values():
    latent = torch.randn(1, 48, 2, 3, 4, generator=torch.Generator().manual_seed(3))
    assert np.abs(as_array(latent_rgb_preview(latent.bfloat16())) - as_array(latent_rgb_preview(latent))).max() <= 3
    latent[0, :, 0, 0, 0] = float("nan")
    assert as_array(latent_rgb_preview(latent)).shape == (3, 4, 3)


@pytest.mark.parametrize("latent,message", [
    (torch.zeros(1, 32, 1, 4, 4), "expected a Wan latent with 16 \\(Wan2.1\\) or 48 \\(Wan2.2\\) channels, found 32"),
    (torch.zeros(1, 16, 4, 4), "expected a latent \\[B, C, T, h, w\\], found \\(1, 16, 4, 4\\)"),
    (torch.zeros(1, 16, 0, 4, 4), "empty"),
    ([[0.0]], "found list"),
])
def test_errors(latent, message):
    with pytest.raises(ValueError, match=message):
        latent_rgb_preview(latent)
