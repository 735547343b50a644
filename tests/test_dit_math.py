"""Closed-form values from docs/architecture.md §15 and structural facts of the official model."""
import math

import torch
from conftest import run

from wan_core.models.dit import WanConfig, WanDiT, rope_axis_pairs, rope_frequencies, sinusoidal_embedding
from wan_core.testing.dit import example_inputs


def test_sinusoid_values():
    cols = [0, 1, 127, 128, 129, 255]
    emb = sinusoidal_embedding(torch.tensor([0.0, 500.0, 999.0]), 256)
    assert emb.dtype == torch.float64
    assert emb[0, cols].tolist() == [1, 1, 1, 0, 0, 0]
    expected_500 = [-0.8838492734, 0.9459425798, 0.9985568698, -0.4677718053, 0.3243341420, 0.0537045423]
    expected_999 = [0.9996498530, 0.9637824786, 0.9942431641, -0.0264607527, -0.2666895835, 0.1071472377]
    assert torch.allclose(emb[1, cols], torch.tensor(expected_500, dtype=torch.float64), atol=1e-9)
    assert torch.allclose(emb[2, cols], torch.tensor(expected_999, dtype=torch.float64), atol=1e-9)


def test_rope_split_and_frequencies():
    assert rope_axis_pairs(128) == (22, 21, 21)
    freqs = rope_frequencies((2, 3, 4), 128)
    assert freqs.shape == (24, 1, 64) and freqs.dtype == torch.complex128
    # token (t=1, h=0, w=0) is index 12: only the temporal pairs rotate, by theta_t,j
    angles = torch.angle(freqs[12, 0])
    assert math.isclose(angles[1].item(), 0.657933224657568, rel_tol=1e-12)  # 10000^(-2/44)
    assert math.isclose(angles[21].item(), 1.519911082952933e-4, rel_tol=1e-9)
    assert torch.all(angles[22:] == 0)
    # token (0, 1, 0) is index 4: the h-axis pairs 22..42 rotate with denominators 42
    angles = torch.angle(freqs[4, 0])
    assert math.isclose(angles[23].item(), 0.6449466771037624, rel_tol=1e-12)
    assert math.isclose(angles[42].item(), 1.5505157798326253e-4, rel_tol=1e-9)
    assert torch.all(angles[:22] == 0) and torch.all(angles[43:] == 0)


def test_parameter_and_tensor_counts_of_releases():
    """Per docs/architecture.md §1: e.g. 2.1 T2V-1.3B has 1.419 B params in 825 tensors (meta device: no memory)."""
    releases = {
        (1536, 8960, 12, 30, 16, 16, False, 0): (1.419e9, 825),
        (5120, 13824, 40, 40, 16, 16, False, 0): (14.288e9, 1095),
        (5120, 13824, 40, 40, 36, 16, True, 0): (16.395e9, 1303),
        (5120, 13824, 40, 40, 36, 16, True, 514): (16.396e9, 1304),
        (3072, 14336, 24, 30, 48, 48, False, 0): (5.000e9, 825),
    }
    for (dim, ffn, heads, layers, i, o, img, flf), (params, tensors) in releases.items():
        with torch.device("meta"):
            m = WanDiT(WanConfig(dim=dim, ffn_dim=ffn, num_heads=heads, num_layers=layers, in_dim=i, out_dim=o,
                                 image_branch=img, flf_pos_tokens=flf, model_type="i2v" if img else "t2v"))
        sd = m.state_dict()
        assert len(sd) == tensors
        assert abs(sum(t.numel() for t in sd.values()) - params) < 0.0006e9


def test_text_padding_rows_are_attended(tiny_models):
    """Zero padding to text_len matters (padded rows are embedded and attended, not masked)."""
    model = tiny_models["t2v"]
    inputs = example_inputs(model.config)
    padded = dict(inputs, context=torch.nn.functional.pad(inputs["context"], (0, 0, 0, 100)))
    assert torch.allclose(run(model, padded), run(model, inputs), atol=1e-6)  # explicit zero rows = implicit


def test_velocity_depends_on_every_input(tiny_models):
    model = tiny_models["i2v"]
    inputs = example_inputs(model.config)
    base = run(model, inputs)
    for key in ("x", "context", "clip_fea", "y"):
        # random, not constant, perturbations: img_emb starts with a LayerNorm (shift-invariant)
        changed = dict(inputs, **{key: inputs[key] + 0.5 * torch.randn_like(inputs[key])})
        assert not torch.allclose(run(model, changed), base, atol=1e-4), key
    assert not torch.allclose(run(model, dict(inputs, timestep=torch.tensor([100.0]))), base, atol=1e-4)


def test_rope_rotation_matches_complex128_reference():
    """Our real-arithmetic rotation equals the official complex128 multiply (fp32 mode: float64 math)."""
    from wan_core.models.dit import apply_rope, rope_tables

    grid, head_dim = (3, 4, 6), 128
    x = torch.randn(2, 72, 2, head_dim) * 10
    reference = torch.view_as_real(
        torch.view_as_complex(x.double().unflatten(-1, (-1, 2))) * rope_frequencies(grid, head_dim)
    ).flatten(-2).float()
    assert torch.equal(apply_rope(x, rope_tables(grid, head_dim, dtype=torch.float64)), reference)
    fp32 = apply_rope(x, rope_tables(grid, head_dim, dtype=torch.float32))
    assert (fp32 - reference).abs().max() < 1e-5  # 16-bit modes: fp32 math, a few ulp
