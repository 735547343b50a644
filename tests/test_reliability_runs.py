"""No lost or wasted work: saves with a counter never collide, a resume refuses a state made for
another model or tampered with (checked field by field, before anything is used), and an output
that cannot be written is found before step 1."""
from __future__ import annotations

import threading
import time

import pytest
import torch
from test_nodes_training import handle, pack_module
from test_save_video import moving_gradient, node, out_dir  # noqa: F401  (the fixture)
from test_training import ToyLatents, quick, small_model

from wan_core.io.write import check_writable
from wan_core.training.flow_matching import STATE_FILE, BatchStream, epoch_batches, train
from wan_core.training.run import StateError, load_state

training_nodes = pack_module("training")
save_video = pack_module("save_video")


# ---- saves with a counter ----------------------------------------------------------------------

def test_simultaneous_saves_with_one_prefix_get_different_files(out_dir, monkeypatch):  # noqa: F811
    """Two saves pick their counter at the same moment (the encoder is slowed down so they overlap):
    each must end with its own file, with its own frames."""
    real = save_video.encode_video
    started = threading.Barrier(2)

    def slow_encode(path, images, *args, **kw):
        started.wait(timeout=30)  # both have chosen their name before either has written anything
        real(path, images, *args, **kw)
    monkeypatch.setattr(save_video, "encode_video", slow_encode)
    results = {}

    def save(i):
        images = moving_gradient(n=3, h=16, w=16) * (0.3 + 0.6 * i)
        results[i] = node().save(images, 16.0, "wanflow/same", "mp4", 19)["ui"]["images"][0]["filename"]
    threads = [threading.Thread(target=save, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert sorted(results.values()) == ["same_00001_.mp4", "same_00002_.mp4"], results
    sizes = [(out_dir / "wanflow" / name).stat().st_size for name in results.values()]
    assert all(size > 100 for size in sizes)  # both are real videos, neither an empty claim


def test_a_name_at_the_file_systems_limit_saves(out_dir):  # noqa: F811
    """The final name fits (255 bytes); the temporary file must not be the one that fails."""
    prefix = "v" * (255 - len("_00001_.mp4"))
    result = node().save(moving_gradient(n=2, h=16, w=16), 16.0, prefix, "mp4", 19)
    assert (out_dir / result["ui"]["images"][0]["filename"]).stat().st_size > 100
    with pytest.raises(ValueError, match="too long"):
        node().save(moving_gradient(n=2, h=16, w=16), 16.0, prefix + "vv", "mp4", 19)
    assert not [p for p in out_dir.iterdir() if p.name.startswith(".")]  # no partial left behind


# ---- resumes -----------------------------------------------------------------------------------

def test_a_state_of_another_base_model_is_refused(tmp_path):
    train(small_model(seed=0), ToyLatents(), quick(steps=2), state_dir=tmp_path)
    with pytest.raises(ValueError, match="made for another base model.*new output name"):
        train(small_model(seed=1), ToyLatents(), quick(steps=4), state_dir=tmp_path)  # same shapes, other weights
    # the same base model (loaded again, in another dtype too) resumes
    result = train(small_model(seed=0), ToyLatents(), quick(steps=4), state_dir=tmp_path)
    assert result.steps_done == 4 and len(result.history) == 4


def test_a_lora_state_of_another_base_model_is_refused_in_lora_mode_too(tmp_path):
    train(small_model(seed=0), ToyLatents(), quick(mode="lora", steps=1, lora_rank=2), state_dir=tmp_path)
    with pytest.raises(ValueError, match="another base model"):
        train(small_model(seed=3), ToyLatents(), quick(mode="lora", steps=2, lora_rank=2), state_dir=tmp_path)


def tampered(tmp_path, change):
    train(small_model(), ToyLatents(), quick(steps=2), state_dir=tmp_path)
    state = torch.load(tmp_path / STATE_FILE, weights_only=True)
    change(state)
    torch.save(state, tmp_path / STATE_FILE)


@pytest.mark.parametrize("field, change", [
    ("data_position", lambda s: s.update(data_position=10 ** 15)),
    ("data_position", lambda s: s.update(data_position="3")),
    ("step", lambda s: s.update(step=-1)),
    ("step", lambda s: s.update(step=10 ** 12)),
    ("history", lambda s: s.update(history=s["history"][:1])),
    ("history\\[0\\]", lambda s: s["history"][0].update(loss="x")),
    ("trainable names", lambda s: s["trainable"].pop(next(iter(s["trainable"])))),
    ("trainable\\[", lambda s: s["trainable"].update({k: v[:1] for k, v in list(s["trainable"].items())[:1]})),
    ("generator", lambda s: s.update(generator=torch.zeros(3))),
    ("optimizer", lambda s: s.update(optimizer=[1, 2])),
    ("format", lambda s: s.update(format=99)),
    ("base_model", lambda s: s.update(base_model="anything")),
], ids=lambda v: v if isinstance(v, str) else "")
def test_every_field_of_a_tampered_state_is_checked_before_use(tmp_path, field, change):
    tampered(tmp_path, change)
    model = small_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    started = time.perf_counter()
    with pytest.raises(StateError, match=f"{field}.*expected.*to start fresh"):
        train(model, ToyLatents(), quick(steps=4), state_dir=tmp_path)
    assert time.perf_counter() - started < 30  # refused at once, no replay of a huge position
    for k, v in model.state_dict().items():  # nothing of the state was used
        assert torch.equal(v, before[k]), k


def test_a_state_file_that_is_not_a_dict_is_refused(tmp_path):
    torch.save([1, 2, 3], tmp_path / STATE_FILE)
    with pytest.raises(ValueError, match="not a dict of fields.*start fresh"):
        load_state(tmp_path, STATE_FILE)


def test_the_data_position_is_restored_without_replaying_it():
    data = ToyLatents(n=5)
    stream = BatchStream(data, 2, seed=3)
    served = [stream.next() for _ in range(23)]
    resumed = BatchStream(data, 2, seed=3, position=17)
    assert [resumed.next() for _ in range(6)] == served[17:]
    # a position far beyond the run costs one epoch's shuffle, not a replay
    per_epoch = len(epoch_batches(data, 2, 3, 0))
    started = time.perf_counter()
    far = BatchStream(data, 2, seed=3, position=per_epoch * 10 ** 9 + 1)
    assert far.epoch == 10 ** 9 and far.cursor == 1 and time.perf_counter() - started < 1


# ---- outputs that cannot be written ------------------------------------------------------------

def test_check_writable_names_the_problem(tmp_path):
    (tmp_path / "afile").write_text("x")
    with pytest.raises(ValueError, match="a part of its folder is a file"):
        check_writable(tmp_path / "afile" / "out.safetensors")
    with pytest.raises(ValueError, match="file name is 302 bytes, the file system takes at most 255"):
        check_writable(tmp_path / ("n" * 290 + ".safetensors"))
    (tmp_path / "adir.safetensors").mkdir()
    with pytest.raises(ValueError, match="a folder of that name exists"):
        check_writable(tmp_path / "adir.safetensors")
    ok = check_writable(tmp_path / "sub" / "fine.safetensors")
    assert ok.parent.is_dir() and not ok.exists()  # the probe leaves nothing behind


@pytest.fixture
def model_folders(tmp_path, monkeypatch):
    monkeypatch.setenv("WANFLOW_MODELS_DIR", str(tmp_path / "models"))
    monkeypatch.setenv("WANFLOW_OUTPUT_DIR", str(tmp_path / "output"))
    return tmp_path


@pytest.mark.parametrize("name, message", [("blocked/lora", "a part of its folder is a file"),
                                           ("x" * 260, "file name is")])
def test_an_unwritable_output_is_found_before_step_one(model_folders, monkeypatch, name, message):
    (model_folders / "models" / "loras").mkdir(parents=True)
    (model_folders / "models" / "loras" / "blocked").write_text("a file where a folder would go")
    steps = []
    monkeypatch.setattr(training_nodes, "train", lambda *a, **k: steps.append(1))
    with pytest.raises(ValueError, match=message):
        training_nodes.WanFlowLoRATraining().run(handle(), ToyLatents(), name, steps=2, learning_rate=1e-3,
                                                 lora_rank=2, lora_alpha=2.0, lora_targets="attention", seed=0)
    assert steps == []  # training never started


# ---- settings out of range ---------------------------------------------------------------------

@pytest.mark.parametrize("cls, field, value, message", [
    ("train", "ema_decay", 1.5, "must lie in"), ("train", "warmup_steps", -1, "must lie in"),
    ("train", "max_grad_norm", float("nan"), "finite"), ("train", "logit_std", 0.0, "must lie in"),
    ("train", "shift", 0.0, "must lie in"), ("train", "learning_rate", float("inf"), "finite"),
    ("train", "batch_size", 2.5, "whole number"), ("train", "steps", "10", "expected a number"),
    ("train", "sigma_sampling", "cosine", "must be one of"), ("train", "gradient_checkpointing", 1, "true or false"),
    ("train", "sigma_range", (0.2, float("nan")), "finite"),
    ("srpo", "hinge", float("nan"), "finite"), ("srpo", "eval_every", -2, "must lie in"),
    ("srpo", "discount_denoise", (0.1, -1.0), "must lie in"), ("srpo", "keep", "first", "must be one of"),
])
def test_every_setting_out_of_its_range_is_refused_by_name(cls, field, value, message):
    from wan_core.rewards.srpo import SRPOConfig
    from wan_core.training.flow_matching import TrainConfig

    config = TrainConfig if cls == "train" else SRPOConfig
    with pytest.raises(ValueError, match=f"{config.__name__}.{field}.*{message}"):
        config(**{field: value})
