import pytest
import torch

from wan_core.testing.dit import example_inputs, random_dit

KINDS = ["t2v", "i2v", "flf2v", "ti2v", "i2v-2.2"]


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    torch.set_num_threads(2)


@pytest.fixture(scope="session")
def tiny_models():
    """One random fp32 tiny model per variant, shared by the tests (never mutate them)."""
    return {kind: random_dit(kind, seed=i) for i, kind in enumerate(KINDS)}


def run(model, inputs):
    with torch.no_grad():
        return model(**inputs)


def assert_close(actual, expected, tol=1e-4, what=""):
    diff = (actual - expected).abs().max().item()
    assert torch.allclose(actual, expected, atol=tol, rtol=tol), f"{what}: max abs diff {diff:.3e} > {tol}"
    return diff


__all__ = ["KINDS", "run", "assert_close", "example_inputs"]
