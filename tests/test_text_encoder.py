"""UMT5 text encoder: every on-disk layout loads and matches transformers' UMT5EncoderModel, the
official key mapping is right (checked against an independent forward written from the spec),
prompts are cleaned/tokenized/trimmed as the official pipeline does, and bad input is refused."""
import math

import pytest
import torch
import torch.nn.functional as F

from wan_core import CheckpointError
from wan_core.formats.text_encoder import (
    infer_umt5_config,
    load_text_encoder,
    official_to_hf_name,
    text_encoder_key_map,
)
from wan_core.io.write import save_pth, save_safetensors
from wan_core.models.layers import ScaledCastLinear
from wan_core.models.text_encoder import pad_context
from wan_core.models.tokenizer import HFTokenizer, SentencePieceTokenizer, TokenizerError, clean_prompt, load_tokenizer
from wan_core.testing import text_encoder as tt

PROMPTS = [
    "A cat walks on the grass, realistic style.",
    "一只猫在草地上行走，写实风格。",
    "Der Hund läuft über die Straße, café crème 🐱 Ωmega",  # the emoji and Ω are byte-fallback pieces
    "fox",
]
ALL_IN_ONE = "text_encoders.umt5xxl.transformer."


@pytest.fixture(scope="module")
def proto():
    return tt.tiny_spiece_model()


@pytest.fixture(scope="module")
def tiny():
    return tt.random_umt5(seed=0)


@pytest.fixture(scope="module")
def hf_state(tiny):
    return tt.hf_state_dict(tiny)


def reference(state: dict, config, ids, mask):
    """transformers' UMT5EncoderModel holding `state` (fp32), run with the attention mask."""
    with torch.no_grad():
        return tt.reference_model(state, config)(input_ids=ids, attention_mask=mask).last_hidden_state


def batch(tokenizer, prompts=PROMPTS, **kw):
    return tokenizer.tokenize([clean_prompt(p) for p in prompts], **kw)


def assert_same_weights(encoder, expected: dict):
    loaded = encoder.model.state_dict()
    for name, w in expected.items():
        assert torch.equal(loaded[name].float(), w.float()), name
    assert loaded["encoder.embed_tokens.weight"] is loaded["shared.weight"] or torch.equal(
        loaded["encoder.embed_tokens.weight"], loaded["shared.weight"])
    # read tensor by tensor into memory of its own: no parameter aliases another (or a scratch buffer)
    ptrs = [p.untyped_storage().data_ptr() for p in encoder.model.parameters()]
    assert len(set(ptrs)) == len(ptrs)


# --------------------------------------------------------------------------------------------
# Layouts
# --------------------------------------------------------------------------------------------


def write_layout(layout: str, model, folder):
    """-> (source, the fp32 HF-name weights a correct loader must produce, expected tokenizer class)."""
    exact = {k: v.float() for k, v in tt.hf_state_dict(model).items()}
    if layout == "official .pth fp32":
        return tt.save_official_layout(model, folder, dtype=torch.float32), exact, HFTokenizer
    if layout == "official folder bf16":
        tt.save_official_layout(model, folder, dtype=torch.bfloat16)
        return folder, {k: v.bfloat16().float() for k, v in exact.items()}, HFTokenizer
    if layout == "hf folder":
        tt.save_hf_folder(model, folder / "umt5")
        tt.save_tokenizer_folder(tt.tiny_spiece_model(), folder / "umt5" / "tokenizer")
        return folder / "umt5", exact, HFTokenizer
    if layout == "diffusers pipeline (sharded)":
        return tt.save_pipeline(model, folder / "pipe"), exact, HFTokenizer
    kwargs = {
        "comfyui fp16": dict(dtype=torch.float16),
        "comfyui bf16 all-in-one": dict(dtype=torch.bfloat16, prefix=ALL_IN_ONE, embed_tokens=True),
        "comfyui fp8_scaled": dict(fp8="scaled"),
        "comfyui fp8_e4m3fn": dict(fp8="e4m3fn", embed_tokens=True),
    }[layout]
    tensors = tt.comfyui_state_dict(tt.hf_state_dict(model), spiece=tt.tiny_spiece_model(), **kwargs)
    if kwargs.get("prefix"):  # an all-in-one checkpoint also holds the DiT
        tensors["model.diffusion_model.head.modulation"] = torch.zeros(1, 2, 8)
    path = save_safetensors(tensors, folder / f"{layout.replace(' ', '_')}.safetensors")
    return path, tt.dequantized_reference(tensors, kwargs.get("prefix", "")), SentencePieceTokenizer


LAYOUTS = ["official .pth fp32", "official folder bf16", "hf folder", "diffusers pipeline (sharded)", "comfyui fp16",
           "comfyui bf16 all-in-one", "comfyui fp8_scaled", "comfyui fp8_e4m3fn"]
DEFAULT_DTYPE = {"official .pth fp32": torch.float32, "hf folder": torch.float32,
                 "diffusers pipeline (sharded)": torch.float32}


@pytest.mark.parametrize("layout", LAYOUTS)
def test_layout_matches_transformers(layout, tiny, tmp_path):
    source, expected, tokenizer_class = write_layout(layout, tiny, tmp_path)
    encoder = load_text_encoder(source, dtype=torch.float32)
    assert_same_weights(encoder, expected)
    assert isinstance(encoder.tokenizer, tokenizer_class)
    ids, mask = batch(encoder.tokenizer, padding="longest")
    assert mask.sum(1).unique().numel() > 1  # a padded batch
    with torch.no_grad():
        got = encoder(ids, mask)
    want = reference(expected, tiny.config, ids, mask)
    rows = mask.bool()
    torch.testing.assert_close(got[rows], want[rows], atol=1e-5, rtol=1e-5)
    # default compute dtype: fp32 files -> fp32, everything else -> bf16 (the official T5 dtype)
    assert load_text_encoder(source).dtype == DEFAULT_DTYPE.get(layout, torch.bfloat16)


def test_official_key_table_covers_the_hf_model(hf_state):
    official = tt.official_state_dict(hf_state)
    assert len(official) == 2 + 10 * tt.TINY_UMT5["num_layers"]  # 242 for the 24-layer release
    assert {official_to_hf_name(k) for k in official} == set(hf_state)
    assert official["blocks.1.ffn.gate.0.weight"] is hf_state["encoder.block.1.layer.1.DenseReluDense.wi_0.weight"]


def test_umt5_xxl_config_from_release_shapes():
    """The released encoder's shapes (docs/architecture.md §13, docs/formats.md §8; official names) give its config and 5.7 B parameters."""
    from transformers import UMT5EncoderModel

    d, ff = 4096, 10240
    shapes = {"token_embedding.weight": (256384, d), "norm.weight": (d,)}
    for i in range(24):
        shapes.update({f"blocks.{i}.norm1.weight": (d,), f"blocks.{i}.norm2.weight": (d,),
                       f"blocks.{i}.pos_embedding.embedding.weight": (32, 64),
                       f"blocks.{i}.ffn.gate.0.weight": (ff, d), f"blocks.{i}.ffn.fc1.weight": (ff, d),
                       f"blocks.{i}.ffn.fc2.weight": (d, ff)})
        shapes.update({f"blocks.{i}.attn.{n}.weight": (d, d) for n in "qkvo"})
    assert len(shapes) == 242
    name_map, layout, _ = text_encoder_key_map(list(shapes), "umt5-xxl.pth")
    cfg = infer_umt5_config(lambda k: shapes[name_map[k]], set(name_map), None, "umt5-xxl.pth")
    assert layout == "official"
    assert (cfg.vocab_size, cfg.d_model, cfg.num_heads, cfg.d_kv, cfg.d_ff, cfg.num_layers) == (256384, d, 64, 64, ff, 24)
    with torch.device("meta"):
        model = UMT5EncoderModel(cfg)
    params = dict(model.named_parameters())
    assert {k: tuple(p.shape) for k, p in params.items()} == {k: shapes[v] for k, v in name_map.items()}
    assert 5.6e9 < sum(p.numel() for p in params.values()) < 5.8e9


def official_forward(sd: dict, ids, mask, heads: int, eps=1e-6, buckets=32, max_distance=128):
    """The official T5 encoder written from docs/architecture.md §13 with official names: no attention scaling,
    a per-layer bidirectional bucketed position bias, FFN = fc2(fc1(x) * gelu_tanh(gate(x)))."""
    x = sd["token_embedding.weight"][ids]
    B, L, _ = x.shape
    rel = torch.arange(L)[None, :] - torch.arange(L)[:, None]  # key - query
    half, exact = buckets // 2, buckets // 4
    r = rel.abs()
    log_r = torch.log(r.clamp(min=1).double() / exact) / math.log(max_distance / exact)
    log_bucket = exact + (log_r * (half - exact)).floor().long()
    bucket = (rel > 0).long() * half + torch.where(r < exact, r, log_bucket.clamp(max=half - 1))
    padded_keys = (mask == 0)[:, None, None, :]

    def rms(v, w):
        return v * torch.rsqrt(v.pow(2).mean(-1, keepdim=True) + eps) * w

    layers = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("blocks."))
    for i in range(layers):
        p = f"blocks.{i}."
        h = rms(x, sd[p + "norm1.weight"])
        q, k, v = (F.linear(h, sd[p + f"attn.{n}.weight"]).view(B, L, heads, -1).transpose(1, 2) for n in "qkv")
        logits = q @ k.transpose(-1, -2) + sd[p + "pos_embedding.embedding.weight"][bucket].permute(2, 0, 1)
        attn = logits.masked_fill(padded_keys, torch.finfo(x.dtype).min).softmax(-1) @ v
        x = x + F.linear(attn.transpose(1, 2).reshape(B, L, -1), sd[p + "attn.o.weight"])
        h = rms(x, sd[p + "norm2.weight"])
        gate = F.gelu(F.linear(h, sd[p + "ffn.gate.0.weight"]), approximate="tanh")
        x = x + F.linear(F.linear(h, sd[p + "ffn.fc1.weight"]) * gate, sd[p + "ffn.fc2.weight"])
    return rms(x, sd["norm.weight"])


def test_official_mapping_against_independent_forward(tiny, hf_state, tmp_path):
    official = tt.official_state_dict(hf_state)
    path = save_pth(official, tmp_path / "models_t5_umt5-xxl-enc-bf16.pth")
    encoder = load_text_encoder(path, dtype=torch.float32)
    assert encoder.tokenizer is None  # no google/umt5-xxl folder next to it
    gen = torch.Generator().manual_seed(3)
    ids = torch.randint(4, tiny.config.vocab_size, (2, 160), generator=gen)  # 160 > max_distance 128
    mask = torch.ones_like(ids)
    mask[1, 70:] = 0
    with torch.no_grad():
        got = encoder(ids, mask)
    want = official_forward(official, ids, mask, heads=tiny.config.num_heads)
    rows = mask.bool()
    torch.testing.assert_close(got[rows], want[rows], atol=1e-5, rtol=1e-5)
    # negative control: the two feed-forward branches swapped must be noticed
    swapped = dict(official)
    for i in range(tiny.config.num_layers):
        swapped[f"blocks.{i}.ffn.gate.0.weight"], swapped[f"blocks.{i}.ffn.fc1.weight"] = (
            official[f"blocks.{i}.ffn.fc1.weight"], official[f"blocks.{i}.ffn.gate.0.weight"])
    assert (official_forward(swapped, ids, mask, tiny.config.num_heads)[rows] - want[rows]).abs().max() > 1e-3


# --------------------------------------------------------------------------------------------
# fp8 and low-memory mode
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def scaled_file(hf_state, tmp_path_factory):
    tensors = tt.comfyui_state_dict(hf_state, fp8="scaled", spiece=tt.tiny_spiece_model())
    return save_safetensors(tensors, tmp_path_factory.mktemp("fp8") / "umt5_fp8_scaled.safetensors"), tensors


def test_fp8_dequantization_is_exact(scaled_file):
    path, tensors = scaled_file
    q = "encoder.block.1.layer.1.DenseReluDense.wo."
    assert tensors[q + "weight"].dtype == torch.float8_e4m3fn and tensors[q + "scale_weight"].numel() == 1
    scaled = [name for name in tensors if name.endswith(".scale_weight")]
    assert len(scaled) >= 7 * tt.TINY_UMT5["num_layers"]  # every block Linear (q, k, v, o, wi_0, wi_1, wo) is fp8
    for dtype in (torch.float32, torch.bfloat16):
        loaded = load_text_encoder(path, dtype=dtype).model.state_dict()
        for name, w in tensors.items():
            if name.endswith(".scale_weight"):
                base = name[: -len("scale_weight")]
                assert torch.equal(loaded[base + "weight"], (tensors[base + "weight"].float() * w).to(dtype)), base
    assert not torch.equal(loaded[q + "weight"].float(), tensors[q + "weight"].float())  # the scale was applied


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_low_memory_mode_equals_dequantized_load(scaled_file, dtype):
    path, _ = scaled_file
    full = load_text_encoder(path, dtype=dtype)
    small = load_text_encoder(path, dtype=dtype, weight_dtype="file")
    attn = small.model.encoder.block[0].layer[0].SelfAttention
    assert isinstance(attn.q, ScaledCastLinear) and attn.q.weight.dtype == torch.float8_e4m3fn
    assert attn.q.weight_scale is not None and attn.relative_attention_bias.weight.dtype == dtype
    assert small.model.shared.weight.dtype == dtype
    ids, mask = batch(full.tokenizer)
    with torch.no_grad():
        assert torch.equal(small(ids, mask), full(ids, mask))  # one rounding, the same numbers


def test_quantize_on_load(tiny, hf_state, tmp_path):
    path = tt.save_comfyui_file(tiny, tmp_path / "umt5_fp32.safetensors", dtype=torch.float32)
    encoder = load_text_encoder(path, dtype=torch.float32, weight_dtype="fp8_e4m3fn")
    wo = encoder.model.encoder.block[1].layer[1].DenseReluDense.wo
    assert wo.weight.dtype == torch.float8_e4m3fn
    expected = dict(hf_state)
    for name, m in encoder.model.named_modules():
        if isinstance(m, ScaledCastLinear):
            expected[name + ".weight"] = m.weight.float() * m.weight_scale
    ids, mask = batch(encoder.tokenizer)
    with torch.no_grad():
        got = encoder(ids, mask)
    rows = mask.bool()
    torch.testing.assert_close(got[rows], reference(expected, tiny.config, ids, mask)[rows], atol=1e-5, rtol=1e-5)
    bf16_storage = load_text_encoder(path, dtype=torch.float32, weight_dtype="bf16")
    assert bf16_storage.model.encoder.block[0].layer[0].SelfAttention.k.weight.dtype == torch.bfloat16


# --------------------------------------------------------------------------------------------
# encode(): cleaning, tokenization, trimming, padding
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def encoder(tiny, tmp_path_factory):
    folder = tmp_path_factory.mktemp("comfy")
    return load_text_encoder(tt.save_comfyui_file(tiny, folder / "umt5_fp32.safetensors", dtype=torch.float32))


def test_encode_trims_to_token_count_and_matches_single_prompts(encoder, proto):
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_proto=proto)
    out = encoder.encode(PROMPTS)
    assert [o.shape for o in out] == [(len(sp.encode(clean_prompt(p))) + 1, encoder.dim) for p in PROMPTS]
    ids, mask = encoder.tokenize(PROMPTS)
    assert ids.shape == (len(PROMPTS), 512) and (ids[mask == 0] == 0).all()
    for p, o, row, n in zip(PROMPTS, out, ids, mask.sum(1)):
        assert row[n - 1] == 1  # </s> is the last real token (included in the length)
        torch.testing.assert_close(o, encoder.encode(p)[0], atol=1e-5, rtol=1e-5)
    longest = encoder.encode(PROMPTS, padding="longest")
    for a, b in zip(out, longest):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_pad_context(encoder):
    out = encoder.encode(PROMPTS[:3])
    ctx = pad_context(out)
    assert ctx.shape == (3, 512, encoder.dim)
    for i, o in enumerate(out):
        assert torch.equal(ctx[i, : len(o)], o) and not ctx[i, len(o):].any()
    with pytest.raises(ValueError, match="more than length=4"):
        pad_context(out, length=4)


def test_truncation_keeps_eos(encoder, tmp_path, proto):
    long_prompt = " ".join(["cat walks on the grass"] * 200)
    hf = load_tokenizer(tt.save_tokenizer_folder(proto, tmp_path / "tok"))
    for tok in (encoder.tokenizer, hf):
        ids, mask = tok.tokenize([long_prompt, "fox"])
        assert ids.shape == (2, 512) and mask[0].all() and ids[0, -1] == 1 and mask[1].sum() < 10
    assert encoder.encode(long_prompt)[0].shape == (512, encoder.dim)


@pytest.mark.parametrize("raw,clean", [
    ("x < y &amp;amp; z", "x < y & z"),                # ftfy leaves HTML alone here: html.unescape twice
    ("<b>&amp;lt;</b>", "<b><</b>"),
    ("a &amp;lt;b&amp;gt; tag", "a <b> tag"),
    ("cafÃ© crÃ¨me", "café crème"),                    # mojibake fixed by ftfy
    ("  two\n\nlines\tand   spaces  ", "two lines and spaces"),
    ("ＡＢＣ\u00a0x", "ABC x"),                          # ftfy's width fix, no-break space is whitespace
])
def test_clean_prompt(raw, clean):
    assert clean_prompt(raw) == clean


def test_encode_cleans_prompts(encoder):
    dirty, clean = encoder.encode(["  a cat &amp;amp; a\n dog  ", "a cat & a dog"])
    assert torch.equal(dirty, clean)


def test_tokenizer_backends_agree(proto, tmp_path):
    folder = tt.save_tokenizer_folder(proto, tmp_path / "google" / "umt5-xxl")
    hf = load_tokenizer(folder)
    assert isinstance(hf, HFTokenizer) and hf.vocab_size == tt.tokenizer_size(proto)
    spm_bytes = SentencePieceTokenizer(proto, "bytes")
    spm_file = load_tokenizer(folder / "spiece.model")
    (tmp_path / "slow").mkdir()
    (tmp_path / "slow" / "spiece.model").write_bytes(proto)
    spm_folder = load_tokenizer(tmp_path / "slow")  # a folder without tokenizer.json
    want_ids, want_mask = batch(hf)
    assert want_ids.shape == (len(PROMPTS), 512)
    for tok in (spm_bytes, spm_file, spm_folder):
        assert isinstance(tok, SentencePieceTokenizer)
        ids, mask = batch(tok)
        assert torch.equal(ids, want_ids) and torch.equal(mask, want_mask)
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_proto=proto)
    ids, mask = batch(hf, ["🐱"])  # not in the corpus: its 4 UTF-8 bytes, not <unk>
    assert sum(sp.is_byte(i) for i in ids[0, : mask.sum()].tolist()) == 4 and sp.unk_id() not in ids[0].tolist()


# --------------------------------------------------------------------------------------------
# Bad input
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("keys,what", [
    (["head.modulation", "patch_embedding.weight", "blocks.0.self_attn.q.weight"], "Wan diffusion model"),
    (["model.diffusion_model.head.modulation", "model.diffusion_model.blocks.0.ffn.0.weight"], "Wan diffusion model"),
    (["decoder.middle.0.residual.0.gamma", "encoder.conv1.weight", "conv1.weight"], "Wan VAE"),
    (["vision_model.embeddings.patch_embedding.weight", "vision_model.pre_layrnorm.weight"], "CLIP"),
])
def test_other_components_are_named(keys, what, tmp_path):
    path = save_safetensors({k: torch.zeros(2, 2) for k in keys}, tmp_path / "other.safetensors")
    with pytest.raises(CheckpointError, match=f"other.safetensors.*looks like .*{what}.*not a UMT5 text encoder"):
        load_text_encoder(path)


def test_unknown_layout(tmp_path):
    path = save_safetensors({"foo.weight": torch.zeros(2)}, tmp_path / "x.safetensors")
    with pytest.raises(CheckpointError, match="unknown layout.*shared.weight.*found 1 keys"):
        load_text_encoder(path)


def test_t5_v11_is_not_umt5(hf_state, tmp_path):
    state = {k: v for k, v in hf_state.items() if not ("block.1." in k and "relative_attention_bias" in k)}
    with pytest.raises(CheckpointError, match="only block 0 has a relative position bias.*T5 v1.1"):
        load_text_encoder(save_safetensors(state, tmp_path / "t5xxl.safetensors"))


def test_missing_unexpected_and_misshapen_tensors(hf_state, tmp_path):
    wo = "encoder.block.1.layer.1.DenseReluDense.wo.weight"
    state = {k: v for k, v in hf_state.items() if k != wo}
    with pytest.raises(CheckpointError, match=rf"te.safetensors.*missing \['{wo}'\], unexpected \[\]"):
        load_text_encoder(save_safetensors(state, tmp_path / "te.safetensors"))
    state = dict(hf_state, **{"encoder.block.0.layer.0.SelfAttention.lora_A.weight": torch.zeros(2, 2)})
    with pytest.raises(CheckpointError, match=r"missing \[\], unexpected \['encoder.block.0.layer.0.SelfAttention.lora_A"):
        load_text_encoder(save_safetensors(state, tmp_path / "te.safetensors"))
    state = dict(hf_state, **{wo: hf_state[wo][:, :10]})
    with pytest.raises(CheckpointError, match=rf"'{wo}' has shape \(64, 10\), expected \(64, 96\)"):
        load_text_encoder(save_safetensors(state, tmp_path / "te.safetensors"))
    with pytest.raises(CheckpointError, match="incomplete UMT5 text encoder - missing \\['shared.weight'\\]"):
        load_text_encoder(save_safetensors({k: v for k, v in hf_state.items() if k != "shared.weight"},
                                           tmp_path / "te.safetensors"))


def test_tokenizer_with_too_many_ids(tmp_path):
    small = tt.random_umt5(seed=1, vocab_size=400)  # fewer embedding rows than the 448 pieces
    path = tt.save_comfyui_file(small, tmp_path / "small.safetensors")
    with pytest.raises(TokenizerError, match="produces ids up to 447.*small.safetensors has only 400 embedding rows"):
        load_text_encoder(path)
    # the same weights without the embedded tokenizer load: the tokenizer was the problem
    assert load_text_encoder(tt.save_comfyui_file(small, tmp_path / "bare.safetensors", spiece=None)).tokenizer is None


def test_tokenizer_with_other_special_ids(tiny, tmp_path):
    other = tt.tiny_spiece_model(special_ids=(0, 2, 1, 3))  # </s> and <s> swapped
    path = tt.save_comfyui_file(tiny, tmp_path / "te.safetensors", spiece=other)
    with pytest.raises(TokenizerError, match="pad id 0 and </s> id 2; UMT5 expects pad 0 and </s> 1"):
        load_text_encoder(path)


def test_missing_tokenizer(tiny, tmp_path):
    folder = tt.save_hf_folder(tiny, tmp_path / "alone" / "text_encoder")
    encoder = load_text_encoder(folder, dtype=torch.float32)
    ids = torch.tensor([[5, 6, 1]])
    assert encoder(ids, torch.ones_like(ids)).shape == (1, 3, encoder.dim)  # ids still work
    with pytest.raises(TokenizerError, match=r"no tokenizer.*looked for .*spiece_model.*google/umt5-xxl.*Pass tokenizer="):
        encoder.encode("a cat")
    with pytest.raises(FileNotFoundError, match="tokenizer not found"):
        load_text_encoder(folder, tokenizer=tmp_path / "nowhere")
    with_tokenizer = load_text_encoder(folder, dtype=torch.float32, tokenizer=tt.tiny_spiece_model())  # model bytes
    assert with_tokenizer.encode("a cat")[0].shape == (len(with_tokenizer.tokenizer.sp.encode("a cat")) + 1, encoder.dim)
    with pytest.raises(ValueError, match=r"token ids must lie in \[0, 512\)"):
        encoder(torch.tensor([[600, 1]]))


@pytest.mark.parametrize("prompts,match", [
    (123, "str or a list of str, got int"),
    (["a cat", None], "item 1 is NoneType"),
    ([b"bytes"], "item 0 is bytes"),
])
def test_non_string_prompts(encoder, prompts, match):
    with pytest.raises(TypeError, match=match):
        encoder.encode(prompts)
