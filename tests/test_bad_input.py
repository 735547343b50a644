"""Bad input gets an error naming the file, what was expected and what was found."""
import os

import pytest
import torch
from conftest import run

from wan_core import CheckpointError, load_dit
from wan_core.formats.dit import save_official
from wan_core.io.write import save_safetensors
from wan_core.testing.dit import example_inputs, random_dit


@pytest.fixture
def checkpoint(tmp_path, tiny_models):
    return save_safetensors(tiny_models["t2v"].state_dict(), tmp_path / "good.safetensors")


def test_truncated_file(tmp_path, checkpoint):
    data = checkpoint.read_bytes()
    bad = tmp_path / "truncated.safetensors"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"truncated.safetensors.*truncated"):
        load_dit(bad)


def test_corrupt_header(tmp_path):
    bad = tmp_path / "garbage.safetensors"
    bad.write_bytes(os.urandom(4096))
    with pytest.raises(CheckpointError, match="garbage.safetensors.*not a valid safetensors"):
        load_dit(bad)
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_dit(bad)


@pytest.mark.parametrize("keys,what", [
    (["decoder.middle.0.residual.0.gamma", "encoder.conv1.weight", "conv1.weight"], "VAE"),
    (["encoder.block.0.layer.0.SelfAttention.q.weight", "shared.weight"], "text encoder"),
    (["token_embedding.weight", "blocks.0.attn.q.weight", "norm.weight"], "text encoder"),
    (["vision_model.embeddings.patch_embedding.weight", "vision_model.pre_layrnorm.weight"], "CLIP"),
])
def test_other_wan_components_are_named(tmp_path, keys, what):
    path = save_safetensors({k: torch.zeros(2, 2) for k in keys}, tmp_path / "other.safetensors")
    with pytest.raises(CheckpointError, match=f"other.safetensors.*looks like .*{what}.*not a Wan diffusion model"):
        load_dit(path)


def test_unknown_layout(tmp_path):
    path = save_safetensors({"foo.weight": torch.zeros(2), "bar.bias": torch.zeros(2)}, tmp_path / "x.safetensors")
    with pytest.raises(CheckpointError, match="unknown layout.*head.modulation.*found 2 keys"):
        load_dit(path)


def test_shapes_that_fit_no_variant(tmp_path):
    model = random_dit("t2v", in_dim=20)
    path = save_safetensors(model.state_dict(), tmp_path / "odd.safetensors")
    with pytest.raises(CheckpointError, match="fit no released Wan variant: in_dim 20"):
        load_dit(path)


def test_missing_and_misshapen_tensors(tmp_path, tiny_models):
    state = dict(tiny_models["t2v"].state_dict())
    del state["blocks.1.ffn.2.bias"]
    path = save_safetensors(state, tmp_path / "missing.safetensors")
    with pytest.raises(CheckpointError, match=r"missing \['blocks.1.ffn.2.bias'\]"):
        load_dit(path)
    state = dict(tiny_models["t2v"].state_dict())
    state["blocks.1.ffn.0.weight"] = torch.zeros(50, 256)
    path = save_safetensors(state, tmp_path / "shape.safetensors")
    with pytest.raises(CheckpointError, match=r"blocks.1.ffn.0.weight.*shape \(50, 256\), expected \(96, 256\)"):
        load_dit(path)


class _Exploit:
    def __reduce__(self):
        return (os.system, ("touch pwned_by_pickle",))


def test_pth_needing_arbitrary_unpickling_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "evil.pth"
    torch.save({"head.modulation": torch.zeros(1), "payload": _Exploit()}, path)
    with pytest.raises(CheckpointError, match="evil.pth.*refused.*weights-only"):
        load_dit(path)
    assert not (tmp_path / "pwned_by_pickle").exists()


def test_missing_file_and_wrong_extension(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.safetensors"):
        load_dit(tmp_path / "nope.safetensors")
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"GGUF")
    with pytest.raises(CheckpointError, match=r"model.gguf.*unsupported file type '.gguf'"):
        load_dit(gguf)


def test_a14b_root_folder_asks_for_an_expert(tmp_path, tiny_models):
    model = tiny_models["t2v"]
    for expert in ("high_noise_model", "low_noise_model"):
        save_official(model.state_dict(), model.config, tmp_path / expert)
    with pytest.raises(CheckpointError, match="two experts; pass one of .*high_noise_model"):
        load_dit(tmp_path)


def test_unsupported_addon(tmp_path, tiny_models):
    state = dict(tiny_models["t2v"].state_dict(), **{"vace_patch_embedding.weight": torch.zeros(4, 4, 1, 2, 2)})
    path = save_safetensors(state, tmp_path / "vace.safetensors")
    with pytest.raises(CheckpointError, match="VACE checkpoints are not supported"):
        load_dit(path)


def test_forward_input_errors(tiny_models):
    i2v = tiny_models["i2v"]
    inputs = example_inputs(i2v.config)
    with pytest.raises(ValueError, match="expects 36 input channels.*pass y"):
        run(i2v, dict(inputs, y=None))
    with pytest.raises(ValueError, match="needs clip_fea"):
        run(i2v, dict(inputs, clip_fea=None))
    t2v = tiny_models["t2v"]
    inputs = example_inputs(t2v.config)
    with pytest.raises(ValueError, match="multiples of the patch size"):
        run(t2v, dict(inputs, x=inputs["x"][..., :7, :]))
    with pytest.raises(ValueError, match=r"context must be \[B, L_text, 64\]"):
        run(t2v, dict(inputs, context=torch.zeros(1, 5, 32)))
    with pytest.raises(ValueError, match="has no image branch"):
        run(t2v, dict(inputs, clip_fea=torch.zeros(1, 257, 1280)))
