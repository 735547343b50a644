"""Trainer nodes read as a person would: the everyday settings on the trainer, the rest on a settings
node, every widget made from its config field (default, range, step, choices, help), and exactly the
values shown reach the trainer."""
from __future__ import annotations

import dataclasses

import pytest
from test_nodes_training import COMMON, handle, pack_module
from test_training import ToyLatents

from wan_core.rewards.srpo import SRPOConfig, SRPORunOptions
from wan_core.training.flow_matching import FULL_FINETUNE_LR, RunOptions, TrainConfig
from wan_core.training.settings import default_of, documented_fields

training_nodes = pack_module("training")
srpo_nodes = pack_module("srpo")

# node -> the config classes its widgets come from
TRAINERS = {
    training_nodes.WanFlowLoRATraining: (TrainConfig, RunOptions),
    training_nodes.WanFlowFullTraining: (TrainConfig, RunOptions),
    training_nodes.WanFlowTrainingSettings: (TrainConfig, RunOptions),
    srpo_nodes.WanFlowSRPOTraining: (SRPOConfig, SRPORunOptions),
    srpo_nodes.WanFlowSRPOSettings: (SRPOConfig, SRPORunOptions),
}
WIDGET_KINDS = ("INT", "FLOAT", "STRING", "BOOLEAN")
NOT_FROM_CONFIG = {"output_name", "prompts", "heldout_prompts"}  # the run's own inputs, not settings
MAX_TRAINER_WIDGETS = 12


def widgets(node) -> dict:
    specs = node.INPUT_TYPES()
    return {name: spec for section in specs.values() for name, spec in section.items()
            if isinstance(spec[0], list) or spec[0] in WIDGET_KINDS}


def field_of(classes, widget: str):
    """(field, part): the config field a widget is made from; part 0/1 for the low/high of a pair."""
    every = [f for cls in classes for f in documented_fields(cls)]
    for f in every:
        if widget == f.name:
            return f, None
    for f in every:  # a pair of numbers: two widgets
        if isinstance(default_of(f), tuple) and widget in (f"{f.name}_low", f"{f.name}_high"):
            return f, 0 if widget.endswith("_low") else 1
    return None, None


@pytest.mark.parametrize("node", list(TRAINERS), ids=lambda n: n.__name__)
def test_every_widget_is_its_config_field(node):
    classes = TRAINERS[node]
    for name, (kind, spec) in widgets(node).items():
        if name in NOT_FROM_CONFIG:
            continue
        f, part = field_of(classes, name)
        assert f is not None, f"{node.__name__}.{name} has no config field"
        meta, default = f.metadata, default_of(f)
        expected_default = default[part] if part is not None else default
        if isinstance(default, tuple) and part is None:  # a tuple of words: one comma-separated string
            expected_default = ", ".join(default)
        if node is training_nodes.WanFlowFullTraining and name == "learning_rate":
            expected_default = FULL_FINETUNE_LR
        assert spec["default"] == expected_default, (node.__name__, name, spec["default"], expected_default)
        assert spec["tooltip"].startswith(meta["help"]), (node.__name__, name)
        if isinstance(kind, list):
            assert kind == list(meta["choices"] or meta["presets"]), (node.__name__, name)
            continue
        for key in ("min", "step"):
            assert spec.get(key) == meta[key], (node.__name__, name, key, spec.get(key), meta[key])
        if name != "seed":  # the seed widget takes ComfyUI's full 64-bit range, as the field does
            assert spec.get("max") == meta["max"], (node.__name__, name)
        else:
            assert spec["max"] == meta["max"] == 2 ** 64 - 1 and spec["control_after_generate"]


@pytest.mark.parametrize("trainer, settings, classes, skip", [
    (training_nodes.WanFlowLoRATraining, training_nodes.WanFlowTrainingSettings, (TrainConfig, RunOptions),
     ("save_dtype",)),  # a LoRA is saved in its training dtype
    (training_nodes.WanFlowFullTraining, training_nodes.WanFlowTrainingSettings, (TrainConfig, RunOptions),
     ("lora_rank", "lora_alpha", "lora_targets")),
    (srpo_nodes.WanFlowSRPOTraining, srpo_nodes.WanFlowSRPOSettings, (SRPOConfig, SRPORunOptions), ()),
], ids=["lora", "full", "srpo"])
def test_each_setting_is_shown_once_and_the_trainer_stays_small(trainer, settings, classes, skip):
    on_trainer, on_settings = widgets(trainer), widgets(settings)
    assert len(on_trainer) <= MAX_TRAINER_WIDGETS, sorted(on_trainer)
    assert not (on_trainer.keys() & on_settings.keys())
    shown = {field_of(classes, w)[0].name for w in {**on_trainer, **on_settings} if w not in NOT_FROM_CONFIG}
    expected = {f.name for cls in classes for f in documented_fields(cls) if f.metadata["node"] != "none"}
    assert shown == expected - set(skip), (sorted(expected - shown), sorted(shown - expected))


class Captured(Exception):
    pass


def capture_train(monkeypatch, module):
    """Stop the trainer node at its call of the library's train(), keeping the config it built."""
    seen = []

    def fake_train(model, latents, config, **kw):
        seen.append((config, kw))
        raise Captured()
    monkeypatch.setattr(module, "train", fake_train)
    return seen


def test_the_settings_node_values_reach_the_trainer_exactly(monkeypatch):
    seen = capture_train(monkeypatch, training_nodes)
    values = {name: spec[1]["default"] for name, spec in widgets(training_nodes.WanFlowTrainingSettings).items()}
    values.update(batch_size=3, grad_accum=2, sigma_sampling="logit_normal", logit_std=0.7, sigma_range_low=0.1,
                  sigma_range_high=0.9, ema_decay=0.99, max_grad_norm=0.5, warmup_steps=7, validate_every=5)
    (settings,) = training_nodes.WanFlowTrainingSettings().run(**values)
    with pytest.raises(Captured):
        training_nodes.WanFlowLoRATraining().run(handle(), ToyLatents(), "x", steps=9, learning_rate=3e-4,
                                                 lora_rank=8, lora_alpha=4.0, lora_targets="ffn", seed=5,
                                                 settings=settings)
    config, kw = seen[0]
    expected = TrainConfig(mode="lora", steps=9, learning_rate=3e-4, lora_rank=8, lora_alpha=4.0, lora_targets="ffn",
                           seed=5, batch_size=3, grad_accum=2, sigma_sampling="logit_normal", logit_std=0.7,
                           sigma_range=(0.1, 0.9), ema_decay=0.99, max_grad_norm=0.5, warmup_steps=7)
    # (the pack is imported as its own package: compare the fields, the classes are the pack's copies)
    assert dataclasses.asdict(config) == dataclasses.asdict(expected)
    assert kw["validate_every"] == 5


def test_without_settings_the_trainer_uses_the_defaults(monkeypatch):
    seen = capture_train(monkeypatch, training_nodes)
    with pytest.raises(Captured):
        training_nodes.WanFlowFullTraining().run(handle(), ToyLatents(), "x", steps=2, learning_rate=1e-5, seed=0,
                                                 save_dtype="bf16")
    assert dataclasses.asdict(seen[0][0]) == dataclasses.asdict(TrainConfig(mode="full", steps=2, learning_rate=1e-5))


def test_a_wrong_settings_node_is_named(monkeypatch):
    capture_train(monkeypatch, training_nodes)
    srpo_settings = srpo_nodes.WanFlowSRPOSettings().run(
        **{name: spec[1]["default"] for name, spec in widgets(srpo_nodes.WanFlowSRPOSettings).items()})[0]
    with pytest.raises(ValueError, match="expected the output of WanFlow Training Settings; found srpo"):
        training_nodes.WanFlowLoRATraining().run(handle(), ToyLatents(), "x", settings=srpo_settings, **{
            k: spec[1]["default"] for k, spec in widgets(training_nodes.WanFlowLoRATraining).items()
            if k != "output_name"})


def test_srpo_settings_reach_the_config(monkeypatch):
    seen = []

    def fake(model, vae, text_encoder, reward, prompts, heldout, name, config, options, **kw):
        seen.append((config, options))
        return {}
    monkeypatch.setattr(srpo_nodes, "srpo_train", fake)
    values = {name: spec[1]["default"] for name, spec in widgets(srpo_nodes.WanFlowSRPOSettings).items()}
    values.update(sigma_window_low=0.4, sigma_window_high=0.8, positive_words="Sharp, Real", branches="denoise",
                  srp=False, decode_tile=16, negative_prompt="blurry")
    (settings,) = srpo_nodes.WanFlowSRPOSettings().run(**values)
    main = {k: spec[1]["default"] for k, spec in widgets(srpo_nodes.WanFlowSRPOTraining).items()}
    main.update(steps=3, width=32, height=48)
    srpo_nodes.WanFlowSRPOTraining().run(None, None, None, None, settings=settings, **main)
    config, options = seen[0]
    assert dataclasses.asdict(config) == dataclasses.asdict(SRPOConfig(
        steps=3, width=32, height=48, sigma_window=(0.4, 0.8), positive_words=("Sharp", "Real"), branches="denoise",
        srp=False))
    assert dataclasses.asdict(options) == dataclasses.asdict(SRPORunOptions(decode_tile=16, negative_prompt="blurry"))


def test_legacy_nodes_stay_registered_deprecated_and_run():
    for node in (training_nodes.WanFlowTrainLoRA, training_nodes.WanFlowTrainFull, srpo_nodes.WanFlowSRPOTrain):
        assert node.DEPRECATED is True and node.DESCRIPTION.startswith("Deprecated: use ")
    assert training_nodes.NODE_DISPLAY_NAME_MAPPINGS["WanFlowTrainLoRA"] == "WanFlow Train LoRA (legacy)"
    assert training_nodes.NODE_DISPLAY_NAME_MAPPINGS["WanFlowLoRATraining"] == "WanFlow Train LoRA"
    # the old widget names still map onto the config (a saved graph's values)
    config, options = training_nodes.legacy_settings(dict(COMMON, warmup_steps=3, boundary=0.9), lora_rank=4)
    assert (config.steps, config.batch_size, config.warmup_steps, config.lora_rank, options.boundary) == (4, 2, 3, 4, 0.9)


def test_the_command_line_offers_every_field_with_its_help_and_choices():
    import argparse

    from wan_core.training.cli import add_arguments
    parser = add_arguments(argparse.ArgumentParser())
    actions = {a.dest: a for a in parser._actions}
    for f in documented_fields(TrainConfig):
        action = actions[f.name]
        assert action.help.startswith(f.metadata["help"]), f.name
        assert (tuple(action.choices) if action.choices else None) == f.metadata["choices"], f.name
