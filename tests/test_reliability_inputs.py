"""Issue 13: no silent garbage and a clear error for every bad input - NaN/Inf in LoRAs, sampling
settings and checkpoints; malformed config.json, shard indices and latent caches (never a file outside
their folder); empty or incomplete node inputs; seeds past 64 bits; the pickle refusal."""
import json
import math
import os
import warnings

import pytest
import torch
from test_nodes import import_pack

from wan_core import CheckpointError, load_clip_vision, load_dit, load_text_encoder, load_vae
from wan_core.formats.dit import save_official
from wan_core.generation.pipeline import Conditioning, generate, seeded_noise
from wan_core.io.tensor_files import NonFiniteWeightsWarning, open_weights_folder, read_json
from wan_core.io.write import save_safetensors
from wan_core.lora.keys import parse_lora
from wan_core.lora.merge import apply_lora, lora_deltas, set_applied_loras
from wan_core.sampling.solvers import flow_sigmas, sample
from wan_core.testing.dit import random_dit, tiny_config
from wan_core.training.dataset import DatasetError
from wan_core.training.latent_cache import (
    INDEX_NAME,
    CachedLatents,
    CacheEntry,
    check_latents_fit_model,
    load_latent_cache,
    write_index,
)

NAN, INF = float("nan"), float("inf")


def nodes():
    return import_pack().NODE_CLASS_MAPPINGS


def handle(module, role="diffusion"):
    import importlib

    return importlib.import_module(f"{import_pack().__name__}.nodes.comfy_bridge").ModelHandle(module, role=role)


@pytest.fixture(scope="module")
def t2v():
    return random_dit("t2v", seed=3)


# --------------------------------------------------------------------------------------------
# A.2 non-finite values
# --------------------------------------------------------------------------------------------


def _lora(t2v, **changes):
    q = "diffusion_model.blocks.0.self_attn.q"
    dim = t2v.config.dim
    sd = {f"{q}.lora_down.weight": torch.randn(4, dim) * 0.01, f"{q}.lora_up.weight": torch.randn(dim, 4) * 0.01,
          f"{q}.alpha": torch.tensor(4.0)}
    for suffix, value in changes.items():
        sd[f"{q}.{suffix}"] = value
    return sd


@pytest.mark.parametrize("part,value", [
    ("alpha", torch.tensor(NAN)), ("alpha", torch.tensor(INF)),
    ("lora_up.weight", None), ("lora_down.weight", None), ("diff_b", torch.tensor([INF] * 256)),
])
def test_non_finite_lora_is_refused_naming_the_key(tmp_path, t2v, part, value):
    sd = _lora(t2v)
    if value is None:  # one NaN inside a weight
        value = sd[f"diffusion_model.blocks.0.self_attn.q.{part}"].clone()
        value.view(-1)[7] = NAN
    sd[f"diffusion_model.blocks.0.self_attn.q.{part}"] = value
    path = save_safetensors(sd, tmp_path / "bad_lora.safetensors")
    before = t2v.blocks[0].self_attn.q.weight.clone()
    with pytest.raises(ValueError, match=rf"bad_lora.safetensors: 'diffusion_model.blocks.0.self_attn.q.{part}'.*(NaN|nan|inf)"):
        apply_lora(t2v, path)
    assert torch.equal(t2v.blocks[0].self_attn.q.weight, before)  # nothing merged


def test_non_finite_strength_is_refused(t2v):
    sd = _lora(t2v)
    for strength in (NAN, INF, -INF):
        with pytest.raises(ValueError, match="LoRA strength: expected a finite number"):
            lora_deltas(t2v, sd, strength)
        with pytest.raises(ValueError, match="finite"):
            set_applied_loras(t2v, [(sd, strength)])
    with pytest.raises(ValueError, match="WanFlow Load LoRA: strength_model: expected a finite number, found nan"):
        nodes()["WanFlowLoadLoRA"]().load(handle(t2v), "whatever.safetensors", NAN)


def test_rank_zero_lora_is_a_clear_error(t2v):
    q = "diffusion_model.blocks.0.self_attn.q"
    sd = {f"{q}.lora_down.weight": torch.zeros(0, t2v.config.dim), f"{q}.lora_up.weight": torch.zeros(t2v.config.dim, 0),
          f"{q}.alpha": torch.tensor(1.0)}
    with pytest.raises(ValueError, match=rf"state dict: '{q}.lora_down.weight' has rank 0 \(shape \(0, 256\)\); "
                                         r"expected a lora_down of r >= 1 rows"):
        parse_lora(sd)


def test_non_finite_sampling_settings_are_refused(t2v):
    with pytest.raises(ValueError, match="shift must be a finite number; found nan"):
        flow_sigmas(4, NAN)
    with pytest.raises(ValueError, match="shift must be a finite number; found inf"):
        flow_sigmas(4, INF)
    with pytest.raises(ValueError, match="sigmas must be finite"):
        sample(lambda x, s: x, torch.zeros(3), torch.tensor([1.0, NAN, 0.0]))
    noise = seeded_noise((1, 16, 1, 2, 2), 0)
    cond = Conditioning(torch.zeros(1, 4, t2v.config.text_dim), torch.zeros(1, 4, t2v.config.text_dim))
    for kwargs, what in (({"guide_scale": NAN}, r"guide_scale \(cfg\)"), ({"guide_scale": INF}, r"guide_scale \(cfg\)"),
                         ({"shift": NAN}, "shift"), ({"shift": -INF}, "shift"),
                         ({"guide_scale_low": NAN}, r"guide_scale_low \(cfg of the low-noise expert\)"), ({"boundary": NAN}, "boundary"),
                         ({"denoise": NAN}, "denoise")):
        args = {"steps": 2, "shift": 3.0, "guide_scale": 5.0, **kwargs}
        with pytest.raises(ValueError, match=f"{what} must be a finite number"):
            generate(t2v, noise, cond, **args)
    with pytest.raises(ValueError, match="boundary must be in"):
        generate(t2v, noise, cond, steps=2, shift=3.0, guide_scale=5.0, boundary=2.0)


class _NoLoad:
    """A model / VAE input that must not be loaded: the error comes first."""

    def load(self):
        raise AssertionError("loaded before the input was checked")


def test_sampler_node_refuses_non_finite_settings_and_wide_seeds(t2v):
    sampler = nodes()["WanFlowSampler"]()
    latent = {"samples": torch.zeros(1, 16, 1, 2, 2)}
    args = dict(model=handle(t2v), positive=None, negative=None, latent=latent, seed=0, steps=1, solver="euler",
                shift=3.0, cfg=5.0, denoise=1.0)
    for name in ("shift", "cfg", "denoise", "cfg_low_noise", "boundary"):
        for value in (NAN, INF):
            with pytest.raises(ValueError, match=f"WanFlow Sampler: {name} must be a finite number"):
                sampler.sample(**{**args, name: value})
    with pytest.raises(ValueError, match=r"WanFlow Sampler: seed must be an integer 0 \.\.\. 18446744073709551615 "
                                         r"\(64 bits\); found 18446744073709551616"):
        sampler.sample(**{**args, "seed": 2**64})


def test_seeded_noise_seed_range():
    assert seeded_noise((2,), 2**64 - 1).shape == (2,)
    for seed in (2**64, 2**70, -(2**63) - 1):
        with pytest.raises(ValueError, match="seed must be an integer 0 ... 18446744073709551615"):
            seeded_noise((2,), seed)
    for seed in (1.5, "3", None, True):
        with pytest.raises(ValueError, match="seed must be an integer"):
            seeded_noise((2,), seed)


def _warned(fn):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = fn()
    return result, [str(w.message) for w in caught if issubclass(w.category, NonFiniteWeightsWarning)]


def test_dit_with_nan_weights_loads_with_a_warning_naming_the_tensor(tmp_path, t2v):
    state = {k: v.clone() for k, v in t2v.state_dict().items()}
    state["blocks.1.ffn.0.weight"][3, 5] = NAN
    state["head.modulation"].view(-1)[0] = INF
    path = save_safetensors(state, tmp_path / "nan_dit.safetensors")
    model, messages = _warned(lambda: load_dit(path))
    assert len(messages) == 1
    assert "nan_dit.safetensors: the diffusion model has NaN/Inf weights in 2 tensor(s)" in messages[0]
    assert "'blocks.1.ffn.0.weight': 1 of" in messages[0] and "'head.modulation': 1 of" in messages[0]
    assert math.isnan(model.blocks[1].ffn[0].weight[3, 5].item())  # loaded as stored
    _, clean = _warned(lambda: load_dit(save_safetensors(t2v.state_dict(), tmp_path / "ok.safetensors")))
    assert clean == []
    # a value fp16 cannot hold becomes Inf when stored in fp16: warned too
    state = {k: v.clone() for k, v in t2v.state_dict().items()}
    state["blocks.0.ffn.2.weight"][0, 0] = 1e6
    big = save_safetensors(state, tmp_path / "big.safetensors")
    _, messages = _warned(lambda: load_dit(big, dtype=torch.float16))
    assert len(messages) == 1 and "'blocks.0.ffn.2.weight': 1 of" in messages[0] and "float16" in messages[0]


def test_vae_text_encoder_clip_with_nan_weights_warn(tmp_path):
    from wan_core.testing.clip_vision import comfy_state_dict, random_clip_vision
    from wan_core.testing.text_encoder import comfyui_state_dict, hf_state_dict, random_umt5, tiny_spiece_model
    from wan_core.testing.vae import random_vae

    vae_sd = {k: v.clone() for k, v in random_vae("2.1", seed=1).state_dict().items()}
    name = sorted(k for k in vae_sd if k.endswith(".weight"))[0]
    vae_sd[name].view(-1)[0] = NAN
    _, messages = _warned(lambda: load_vae(save_safetensors(vae_sd, tmp_path / "vae.safetensors")))
    assert len(messages) == 1 and "vae.safetensors: the VAE has NaN/Inf" in messages[0] and repr(name) in messages[0]

    te_sd = comfyui_state_dict(hf_state_dict(random_umt5(seed=1)), dtype=torch.float32, spiece=tiny_spiece_model())
    name = next(k for k in te_sd if k.endswith("SelfAttention.q.weight"))
    te_sd[name].view(-1)[2] = -INF
    _, messages = _warned(lambda: load_text_encoder(save_safetensors(te_sd, tmp_path / "te.safetensors")))
    assert len(messages) == 1 and "te.safetensors: the text encoder has NaN/Inf" in messages[0] and repr(name) in messages[0]

    clip_sd = comfy_state_dict(random_clip_vision(seed=1), torch.float32, True)
    name = next(k for k in clip_sd if k.endswith("patch_embedding.weight"))
    clip_sd[name].view(-1)[0] = NAN
    path = save_safetensors(clip_sd, tmp_path / "clip.safetensors")
    _, messages = _warned(lambda: load_clip_vision(path, config={"num_attention_heads": 2}))
    assert len(messages) == 1 and "clip.safetensors: the CLIP vision model has NaN/Inf" in messages[0]
    assert repr(name) in messages[0]


# --------------------------------------------------------------------------------------------
# B: config.json, shard indices, JSON files
# --------------------------------------------------------------------------------------------


@pytest.fixture()
def official_folder(tmp_path, t2v):
    return save_official(t2v.state_dict(), t2v.config, tmp_path / "m")


def _rewrite_config(folder, **changes):
    path = folder / "config.json"
    cfg = json.loads(path.read_text())
    cfg.update(changes)
    path.write_text(json.dumps(cfg))


@pytest.mark.parametrize("changes,message", [
    ({"num_heads": "2"}, "num_heads must be a positive integer; found '2'"),
    ({"num_heads": 3}, "num_heads 3 must divide dim 256"),
    ({"num_heads": 0}, "num_heads must be a positive integer; found 0"),
    ({"num_layers": -2}, "num_layers must be a positive integer; found -2"),
    ({"num_layers": 5}, r"does not describe the weights next to it: it says num_layers 5 \(the weights have 2\)"),
    ({"dim": 512}, r"it says dim 512 \(the weights have 256\)"),
    ({"text_len": 1.5}, "text_len must be a positive integer; found 1.5"),
    ({"eps": -1e-6}, "eps must be a positive finite number"),
    ({"eps": "1e-6"}, "eps must be a positive finite number"),
    ({"model_type": 3}, "model_type must be one of"),
    ({"num_attention_heads": 2, "attention_head_dim": 64}, r"it says dim 128 \(the weights have 256\)"),
    ({"in_channels": True}, "in_channels must be a positive integer; found True"),
])
def test_config_json_with_wrong_types_or_impossible_values(official_folder, changes, message):
    _rewrite_config(official_folder, **changes)
    with pytest.raises(CheckpointError, match=r"m[/\\]config.json.*" + message):
        load_dit(official_folder)


def test_config_json_not_an_object_and_overrides(tmp_path, official_folder):
    (official_folder / "config.json").write_text("[1, 2]")
    with pytest.raises(CheckpointError, match="config.json: expected a JSON object {...}, found a JSON array"):
        load_dit(official_folder)
    (official_folder / "config.json").write_bytes(b"\xff\xfe{")
    with pytest.raises(CheckpointError, match="config.json: not valid JSON"):
        load_dit(official_folder)
    single = save_safetensors(random_dit("t2v", seed=1).state_dict(), tmp_path / "single.safetensors")
    with pytest.raises(ValueError, match="load_dit config=: num_layers must be a positive integer; found -1"):
        load_dit(single, config={"num_layers": -1})
    with pytest.raises(ValueError, match="load_dit config=: text_len must be a positive integer; found '64'"):
        load_dit(single, config={"text_len": "64"})
    with pytest.raises(ValueError, match="load_dit config=: expected a dict of Wan config fields, found str"):
        load_dit(single, config="num_heads=2")
    assert read_json(tmp_path / "absent.json") is None


@pytest.fixture()
def sharded(tmp_path, t2v):
    folder = save_official(t2v.state_dict(), t2v.config, tmp_path / "sharded", shards=2)
    index = next(folder.glob("*.index.json"))
    return folder, index, json.loads(index.read_text())


@pytest.mark.parametrize("mutate,message", [
    (lambda ix: ix.update(weight_map=["a.safetensors"]), r"expected a shard index .*found weight_map = \['a.safetensors'\]"),
    (lambda ix: ix.pop("weight_map"), "found no 'weight_map'"),
    (lambda ix: ix["weight_map"].update({"blocks.0.ffn.0.weight": 3}), "weight_map must map tensor names to shard file names; "
                                                                        "found 'blocks.0.ffn.0.weight': 3"),
    (lambda ix: ix["weight_map"].update({"x": None}), "found 'x': None"),
    (lambda ix: ix["weight_map"].update({"x": "/etc/passwd"}), "refused shard '/etc/passwd' is an absolute path"),
    (lambda ix: ix["weight_map"].update({"x": "../outside.safetensors"}), r"refused shard '../outside.safetensors' leads out of the folder \('..'\)"),
    (lambda ix: ix["weight_map"].update({"x": "sub/../../outside.safetensors"}), "leads out of the folder"),
    (lambda ix: ix["weight_map"].update({"x": "nope.safetensors"}), r"lists shard\(s\) \['nope.safetensors'\] that are not in"),
])
def test_shard_index_entries_are_checked(sharded, mutate, message):
    folder, index, data = sharded
    mutate(data)
    index.write_text(json.dumps(data))
    with pytest.raises(CheckpointError, match=f"{index.name}: .*{message}"):
        load_dit(folder)
    index.write_text("[1]")
    with pytest.raises(CheckpointError, match="found a JSON array"):
        open_weights_folder(folder, "a Wan DiT")


def test_shard_index_symlink_leading_out_is_refused(tmp_path, sharded):
    folder, index, data = sharded
    outside = tmp_path / "outside.safetensors"
    save_safetensors({"x": torch.zeros(1)}, outside)
    try:
        os.symlink(outside, folder / "link.safetensors")
    except OSError:
        pytest.skip("no symlinks here")
    data["weight_map"]["x"] = "link.safetensors"
    index.write_text(json.dumps(data))
    with pytest.raises(CheckpointError, match="refused shard 'link.safetensors' resolves to .*outside.safetensors, outside"):
        load_dit(folder)


def test_tensor_in_two_shards_is_refused(tmp_path, t2v):
    state = t2v.state_dict()
    a = save_safetensors(dict(state), tmp_path / "a.safetensors")
    b = save_safetensors({"head.modulation": state["head.modulation"]}, tmp_path / "b.safetensors")
    with pytest.raises(CheckpointError, match="tensor 'head.modulation' is in two of the files"):
        load_dit([a, b])


def test_pickle_refusal_never_suggests_unsafe_loading(tmp_path):
    class Payload:
        def __reduce__(self):
            return (os.getcwd, ())

    for legacy in (False, True):
        path = tmp_path / f"evil{int(legacy)}.pth"
        torch.save({"head.modulation": torch.zeros(1), "p": Payload()}, path, _use_new_zipfile_serialization=not legacy)
        with pytest.raises(CheckpointError) as info:
            load_dit(path)
        message = str(info.value)
        assert path.name in message and "refused" in message and "GLOBAL" in message
        assert "weights_only" not in message and "False" not in message and "trust" not in message


# --------------------------------------------------------------------------------------------
# B: the latent cache's index.json and its items
# --------------------------------------------------------------------------------------------


def _cache(folder, widths=(64, 64, 64), channels=(16, 16, 16), extra=None):
    """A latent cache folder written directly (no encoders): one entry per width."""
    folder.mkdir(parents=True, exist_ok=True)
    entries = []
    for k, (width, c) in enumerate(zip(widths, channels)):
        latent, text = f"latent-{k}.safetensors", f"text-{k}.safetensors"
        save_safetensors({"latent": torch.zeros(c, 2, 4, 4), **(extra or {})}, folder / latent)
        save_safetensors({"context": torch.zeros(3 + k, width)}, folder / text)
        entries.append(CacheEntry(latent, text, (32, 32, 5), f"caption {k}", f"clip{k}.mp4"))
    write_index(folder, entries, [])
    return folder


def test_well_formed_cache_reopens(tmp_path):
    cache = load_latent_cache(_cache(tmp_path / "c"))
    assert len(cache) == 3 and cache[1]["context"].shape == (4, 64)
    check_latents_fit_model(cache, tiny_config("t2v"))


def test_one_item_with_another_text_width_is_named_when_opened(tmp_path):
    folder = _cache(tmp_path / "c", widths=(64, 64, 32))
    with pytest.raises(DatasetError, match=r"index.json: item 2 \(clip2.mp4\): text embedding width 32, but item 0 "
                                           r"\(clip0.mp4\) has 64"):
        load_latent_cache(folder)
    folder = _cache(tmp_path / "d", channels=(16, 48, 16))
    with pytest.raises(DatasetError, match=r"item 1 \(clip1.mp4\): latent \[48, 2, 4, 4\], but item 0 of the same bucket"):
        load_latent_cache(folder)


def test_fit_check_covers_every_item(tmp_path):
    folder = _cache(tmp_path / "c", widths=(64, 64, 32))
    index = json.loads((folder / INDEX_NAME).read_text())
    cache = CachedLatents(folder, [CacheEntry(**{**e, "bucket": tuple(e["bucket"])}) for e in index["entries"]], [])
    with pytest.raises(ValueError, match=r"item 2 \(clip2.mp4\): the latents' text embeddings are 32 wide, the model takes 64"):
        check_latents_fit_model(cache, tiny_config("t2v"))
    items = [{"latent": torch.zeros(16, 2, 4, 4), "context": torch.zeros(5, 64)}] * 3
    items.append({"latent": torch.zeros(16, 2, 4, 4), "context": torch.zeros(5, 48), "source": "odd.mp4"})
    with pytest.raises(ValueError, match=r"item 3 \(odd.mp4\): the latents' text embeddings are 48 wide"):
        check_latents_fit_model(items, tiny_config("t2v"))
    with pytest.raises(DatasetError, match="item 0: expected a dict with 'latent' and 'context' tensors"):
        check_latents_fit_model([{"latent": torch.zeros(16, 2, 4, 4)}], tiny_config("t2v"))


@pytest.mark.parametrize("mutate,message", [
    (lambda ix: ix.update(entries={"a": 1}), "'entries' must be a list; found dict"),
    (lambda ix: ix.update(skipped="x"), "'skipped' must be a list of \\[file, reason\\] pairs"),
    (lambda ix: ix["entries"].__setitem__(1, "latent-1.safetensors"), "entry 1: expected an object with"),
    (lambda ix: ix["entries"][1].pop("text_file"), r"entry 1 \('clip1.mp4'\): expected the fields .* missing \['text_file'\]"),
    (lambda ix: ix["entries"][1].update(extra=1), r"found unknown \['extra'\]"),
    (lambda ix: ix["entries"][1].update(bucket="32x32x5"), r"bucket must be \[width, height, frames\].*found '32x32x5'"),
    (lambda ix: ix["entries"][1].update(bucket=[32, 32, 4]), r"found \[32, 32, 4\]"),
    (lambda ix: ix["entries"][1].update(repeats=0), "repeats must be an integer >= 1; found 0"),
    (lambda ix: ix["entries"][1].update(caption=None), "caption must be a string; found None"),
    (lambda ix: ix["entries"][1].update(latent_file="/etc/passwd"), "refused latent_file '/etc/passwd' is an absolute path"),
    (lambda ix: ix["entries"][1].update(text_file="../text-0.safetensors"), "refused text_file '../text-0.safetensors' leads out"),
])
def test_tampered_cache_index(tmp_path, mutate, message):
    folder = _cache(tmp_path / "c")
    index = json.loads((folder / INDEX_NAME).read_text())
    mutate(index)
    (folder / INDEX_NAME).write_text(json.dumps(index))
    with pytest.raises(DatasetError, match="index.json: .*" + message):
        load_latent_cache(folder)


def test_cache_index_symlink_leading_out_is_refused(tmp_path):
    folder = _cache(tmp_path / "c")
    save_safetensors({"context": torch.zeros(3, 64)}, tmp_path / "secret.safetensors")
    try:
        os.symlink(tmp_path / "secret.safetensors", folder / "text-link.safetensors")
    except OSError:
        pytest.skip("no symlinks here")
    index = json.loads((folder / INDEX_NAME).read_text())
    index["entries"][0]["text_file"] = "text-link.safetensors"
    (folder / INDEX_NAME).write_text(json.dumps(index))
    with pytest.raises(DatasetError, match="refused text_file 'text-link.safetensors' resolves to .*secret.safetensors"):
        load_latent_cache(folder)


def test_cache_file_without_its_tensor_is_skipped(tmp_path):
    folder = _cache(tmp_path / "c")
    save_safetensors({"y": torch.zeros(20, 2, 4, 4)}, folder / "latent-0.safetensors")
    cache = load_latent_cache(folder)
    assert len(cache) == 2 and "no 'latent' tensor; found ['y']" in dict(cache.skipped)["clip0.mp4"]


def test_tampered_cache_files_are_skipped_with_the_reason(tmp_path):
    folder = _cache(tmp_path / "c")
    save_safetensors({"latent": torch.zeros(16, 2, 4, 4), "payload": torch.zeros(1)}, folder / "latent-1.safetensors")
    save_safetensors({"context": torch.zeros(64)}, folder / "text-2.safetensors")
    cache = load_latent_cache(folder)
    assert len(cache) == 1
    reasons = dict(cache.skipped)
    assert "cache file latent-1.safetensors is missing or unreadable (" in reasons["clip1.mp4"]
    assert "unexpected tensor(s) ['payload']" in reasons["clip1.mp4"]
    assert "'context' is torch.float32 of shape [64]; expected a floating 2-D tensor" in reasons["clip2.mp4"]


# --------------------------------------------------------------------------------------------
# B: node inputs
# --------------------------------------------------------------------------------------------


def test_empty_image_batches_and_latents_without_samples():
    encode, decode = nodes()["WanFlowVAEEncode"](), nodes()["WanFlowVAEDecode"]()
    i2v = nodes()["WanFlowImageToVideo"]()
    for empty in (torch.zeros(0, 32, 32, 3), torch.zeros(1, 0, 32, 3)):
        with pytest.raises(ValueError, match=r"WanFlow VAE Encode: the IMAGE batch is empty \(shape"):
            encode.encode(empty, _NoLoad(), 0)
        with pytest.raises(ValueError, match=r"start_image: the IMAGE batch is empty"):
            i2v.condition([], [], _NoLoad(), empty, 32, 32, 5, 1)
    with pytest.raises(ValueError, match=r"end_image: the IMAGE batch is empty"):
        i2v.condition([], [], _NoLoad(), torch.zeros(1, 32, 32, 3), 32, 32, 5, 1, end_image=torch.zeros(0, 32, 32, 3))
    with pytest.raises(ValueError, match=r"WanFlow VAE Decode: samples: expected a LATENT with 'samples' .*found a dict "
                                         r"with keys \['noise_mask'\]"):
        decode.decode({"noise_mask": torch.zeros(1)}, _NoLoad(), 0)
    with pytest.raises(ValueError, match=r"WanFlow VAE Decode: samples: the LATENT is empty"):
        decode.decode({"samples": torch.zeros(1, 16, 0, 4, 4)}, _NoLoad(), 0)


def test_sampler_latent_without_samples(t2v):
    sampler = nodes()["WanFlowSampler"]()
    args = dict(model=handle(t2v), positive=None, negative=None, seed=0, steps=1, solver="euler", shift=3.0, cfg=5.0,
                denoise=1.0)
    with pytest.raises(ValueError, match=r"latent: expected a LATENT with 'samples' .*found a dict with keys \['batch_index'\]"):
        sampler.sample(latent={"batch_index": [0]}, **args)
    with pytest.raises(ValueError, match="latent: expected a LATENT .*found list"):
        sampler.sample(latent=[1], **args)
    with pytest.raises(ValueError, match="latent: noise_mask must be a tensor"):
        pos = [[torch.zeros(1, 4, t2v.config.text_dim), {}]]
        sampler.sample(**{**args, "positive": pos, "negative": pos},
                       latent={"samples": torch.zeros(1, 16, 1, 2, 2), "noise_mask": "x"})
