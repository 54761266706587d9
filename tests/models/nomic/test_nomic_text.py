"""NomicBERT text module: parity with transformers' own NomicBertModel (default RoPE and dynamic
NTK), the generic branches against an inline einsum reference, invariants, strict loading, and
the real v1/v1.5 shapes (built on the meta device, so no 550 MB of weights)."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from latentspace.models.nomic.text import NomicBertText
from latentspace.models.nomic.text_config import NomicTextConfig
from latentspace.models.nomic.text_dir import is_nomic_text_dir, load_nomic_text, normalise_text_keys, save_nomic_text
from latentspace.models.nomic.weights import CheckpointError, load_strict, read_state_dict

import fakes_nomic_text
from fakes_nomic_text import write_tiny_nomic_text_dir

TOL = 1e-5


def padded_batch(lengths: list[int], seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ids like a BERT tokenizer's: [CLS] random word ids [SEP] [PAD]..."""
    g = torch.Generator().manual_seed(seed)
    n = max(lengths)
    ids = torch.zeros(len(lengths), n, dtype=torch.long)
    mask = torch.zeros(len(lengths), n, dtype=torch.long)
    for i, length in enumerate(lengths):
        ids[i, :length] = torch.randint(1000, 30000, (length,), generator=g)
        ids[i, 0], ids[i, length - 1] = 101, 102
        mask[i, :length] = 1
    return ids, mask


def max_delta_on_tokens(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor) -> float:
    return float(((a - b).abs() * mask[..., None]).max())


def reference_model(directory):
    pytest.importorskip("transformers.models.nomic_bert", reason="transformers has no native NomicBERT (< 5)")
    from transformers import AutoModel

    model = AutoModel.from_pretrained(str(directory), local_files_only=True)
    assert type(model).__name__ == "NomicBertModel"
    return model.eval()


# ---------------------------------------------------------------------------------------------
# T1, T2: parity with transformers
# ---------------------------------------------------------------------------------------------


def test_matches_transformers_on_a_padded_batch(tmp_path):
    """Legacy key names; Wqkv split; fc11 = up, fc12 = gate; post-LN; RoPE base 1000 NeoX; mask."""
    d = write_tiny_nomic_text_dir(tmp_path / "m", seed=1)
    ref = reference_model(d)
    native = load_nomic_text(d)
    ids, mask = padded_batch([12, 7, 3, 10], seed=2)
    with torch.inference_mode():
        want = ref(input_ids=ids, attention_mask=mask).last_hidden_state
        got = native(ids, mask)
    assert got.shape == (4, 12, 32)
    assert max_delta_on_tokens(got, want, mask) <= TOL
    assert float(want.abs().max()) > 1.0  # the comparison is not between near-zero tensors


@pytest.mark.parametrize("length", [12, 40])
def test_dynamic_ntk_matches_a_fresh_transformers_model(tmp_path, length):
    """rotary_scaling_factor=2 with 16 trained positions: unscaled at 12 tokens, NTK-scaled at 40.
    transformers' dynamic RoPE keeps state between calls, so each call gets a fresh model."""
    scaled = write_tiny_nomic_text_dir(tmp_path / "scaled", seed=3, rotary_scaling_factor=2.0, max_trained_positions=16)
    plain = write_tiny_nomic_text_dir(tmp_path / "plain", seed=3, max_trained_positions=16)
    native = load_nomic_text(plain, rotary_scaling_factor=2)
    unscaled = load_nomic_text(plain)
    from_config = load_nomic_text(scaled)  # the factor read from config.json instead
    assert native.config.rotary_scaling_factor == from_config.config.rotary_scaling_factor == 2.0
    ids, mask = padded_batch([length], seed=length)
    with torch.inference_mode():
        want = reference_model(scaled)(input_ids=ids, attention_mask=mask).last_hidden_state
        got = native(ids, mask)
        assert torch.equal(got, from_config(ids, mask))
        differs = float((unscaled(ids, mask) - got).abs().max())
    assert max_delta_on_tokens(got, want, mask) <= TOL
    # scaling applies past the trained length only
    assert (differs > 1e-3) if length > 16 else (differs == 0.0)


def test_native_dynamic_ntk_is_stateless(tmp_path):
    d = write_tiny_nomic_text_dir(tmp_path / "m", seed=4, rotary_scaling_factor=2.0, max_trained_positions=16)
    native = load_nomic_text(d)
    short, short_mask = padded_batch([20], seed=5)
    long, long_mask = padded_batch([40], seed=6)
    with torch.inference_mode():
        before = native(short, short_mask)
        native(long, long_mask)
        after = native(short, short_mask)
    assert torch.equal(before, after)


# ---------------------------------------------------------------------------------------------
# T3: generic branches vs an inline einsum reference
# ---------------------------------------------------------------------------------------------


def einsum_reference(
    state: dict[str, torch.Tensor], cfg: dict, ids: torch.Tensor, mask: torch.Tensor, scaling: float | None = None
) -> torch.Tensor:
    """NomicBERT written out from the formulas: complex-number RoPE, einsum attention, explicit LN."""
    hidden, heads = cfg["n_embd"], cfg["n_head"]
    d = hidden // heads
    r = int(d * cfg["rotary_emb_fraction"])
    eps = cfg["layer_norm_epsilon"]
    b, n = ids.shape

    def ln(x, name):
        mu, var = x.mean(-1, keepdim=True), x.var(-1, unbiased=False, keepdim=True)
        return (x - mu) / torch.sqrt(var + eps) * state[f"{name}.weight"] + state[f"{name}.bias"]

    def linear(x, name):
        return x @ state[f"{name}.weight"].T + state.get(f"{name}.bias", 0)

    base = cfg["rotary_emb_base"]
    if scaling and n > cfg["max_trained_positions"]:
        base *= (scaling * n / cfg["max_trained_positions"] - (scaling - 1)) ** (r / (r - 2))
    angle = torch.arange(n, dtype=torch.float32)[:, None] / base ** (torch.arange(0, r, 2).float() / r)
    phase = torch.polar(torch.ones_like(angle), angle)[:, None, :]  # (L, 1, r/2), e^{i theta}

    def rope(t):  # (B, L, heads, d): rotate the first r features as complex pairs
        rot, rest = t[..., :r], t[..., r:]
        if cfg["rotary_emb_interleaved"]:
            z = torch.view_as_complex(rot.reshape(*rot.shape[:-1], r // 2, 2).contiguous()) * phase
            rot = torch.view_as_real(z).flatten(-2)
        else:
            z = torch.complex(rot[..., : r // 2], rot[..., r // 2 :]) * phase
            rot = torch.cat((z.real, z.imag), -1)
        return torch.cat((rot, rest), -1)

    x = ln(
        state["embeddings.word_embeddings.weight"][ids] + state["embeddings.token_type_embeddings.weight"][0], "emb_ln"
    )
    for i in range(cfg["n_layer"]):
        p = f"encoder.layers.{i}"
        q, k, v = linear(x, f"{p}.attn.Wqkv").view(b, n, 3, heads, d).unbind(2)
        q, k = rope(q), rope(k)
        scores = torch.einsum("blhd,bmhd->bhlm", q, k) / math.sqrt(d)
        scores = scores.masked_fill(~mask.bool()[:, None, None, :], float("-inf"))
        a = torch.einsum("bhlm,bmhd->blhd", scores.softmax(-1), v).reshape(b, n, hidden)
        x = ln(x + linear(a, f"{p}.attn.out_proj"), f"{p}.norm1")
        act = cfg["activation_function"]
        if act in ("swiglu", "geglu", "glu"):
            gate = linear(x, f"{p}.mlp.fc12")
            gate = {"swiglu": F.silu, "geglu": F.gelu, "glu": torch.sigmoid}[act](gate)
            y = linear(linear(x, f"{p}.mlp.fc11") * gate, f"{p}.mlp.fc2")
        else:
            y = linear(F.gelu(linear(x, f"{p}.mlp.fc1")), f"{p}.mlp.fc2")
        x = ln(x + y, f"{p}.norm2")
    return x


VARIANTS = {
    "published": {},
    "biases": {"biases": True},
    "half_rotary": {"rotary_emb_fraction": 0.5},
    "interleaved": {"interleaved": True},
    "all_three_and_ntk": {
        "biases": True,
        "rotary_emb_fraction": 0.5,
        "interleaved": True,
        "rotary_scaling_factor": 2.0,
        "max_trained_positions": 8,
    },
    "geglu": {"activation": "geglu"},
    "glu": {"activation": "glu"},
    "plain_gelu_mlp": {"activation": "gelu_new", "new_keys": False},
}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_variants_match_an_einsum_reference(tmp_path, variant):
    kw = dict(VARIANTS[variant])
    if kw.get("biases") or kw.get("rotary_emb_fraction") or kw.get("interleaved"):
        kw["new_keys"] = False  # transformers' native class cannot express these
    d = write_tiny_nomic_text_dir(tmp_path / variant, seed=7, hidden=32, heads=2, **kw)
    cfg = json.loads((d / "config.json").read_text())
    state = read_state_dict(d)
    native = load_nomic_text(d)
    assert native.config.qkv_proj_bias == native.config.mlp_fc1_bias == bool(kw.get("biases"))
    ids, mask = padded_batch([14, 9, 2], seed=8)
    with torch.inference_mode():
        got = native(ids, mask)
        want = einsum_reference(state, cfg, ids, mask, scaling=cfg["rotary_scaling_factor"])
    assert max_delta_on_tokens(got, want, mask) <= TOL


# ---------------------------------------------------------------------------------------------
# T4: invariants and strict loading
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def tiny(tmp_path):
    return write_tiny_nomic_text_dir(tmp_path / "tiny", seed=11)


def test_padding_invariance_and_determinism(tiny):
    native = load_nomic_text(tiny)
    lengths = [9, 4, 13, 2]
    ids, mask = padded_batch(lengths, seed=12)
    with torch.inference_mode():
        batch = native(ids, mask)
        assert torch.equal(batch, native(ids, mask))
        for i, length in enumerate(lengths):
            alone = native(ids[i : i + 1, :length], mask[i : i + 1, :length])
            # equal up to fp32 rounding (different matmul shapes sum in a different order)
            torch.testing.assert_close(alone[0], batch[i, :length], rtol=1e-6, atol=1e-6)
            assert not batch[i, length:].any()  # padding positions come back as zeros


def test_bfloat16_follows_float32(tiny):
    """Lower precision: rotary tables still computed in fp32 and cast, the mask at bf16's minimum."""
    native = load_nomic_text(tiny)
    ids, mask = padded_batch([11, 5], seed=14)
    with torch.inference_mode():
        want = native(ids, mask)
        got = native.to(torch.bfloat16)(ids, mask)
    assert got.dtype == torch.bfloat16
    cosine = F.cosine_similarity(got.float(), want, dim=-1)[mask.bool()]
    assert float(cosine.min()) > 0.99


def test_left_padding_is_refused(tiny):
    native = load_nomic_text(tiny)
    ids, mask = padded_batch([5, 3])
    with pytest.raises(ValueError, match="right padding"):
        native(ids, mask.flip(1))


def test_mlm_checkpoint_with_bert_prefix_and_cls_heads_loads(tmp_path, tiny):
    heads = {
        "cls.predictions.transform.dense.weight": torch.randn(32, 32),
        "cls.predictions.transform.layer_norm.weight": torch.ones(32),
        "cls.predictions.decoder.weight": torch.randn(30528, 32),
    }
    mlm = write_tiny_nomic_text_dir(tmp_path / "mlm", seed=11, key_prefix="bert.", extra_state=heads)
    cfg = json.loads((mlm / "config.json").read_text())
    cfg["architectures"] = ["NomicBertForPreTraining"]
    (mlm / "config.json").write_text(json.dumps(cfg))
    raw = read_state_dict(mlm)
    with pytest.raises(CheckpointError, match="bert.emb_ln.weight"):  # strict: the raw names do not fit
        load_strict(NomicBertText(NomicTextConfig.from_hf_dict(cfg)), raw, source=str(mlm))
    ids, mask = padded_batch([6, 4])
    with torch.inference_mode():
        assert torch.equal(load_nomic_text(mlm)(ids, mask), load_nomic_text(tiny)(ids, mask))


def test_transformers_in_memory_key_names_load(tmp_path, tiny):
    from safetensors.torch import save_file

    ref = reference_model(tiny)
    state = {k: v.contiguous() for k, v in ref.state_dict().items()}
    assert "layers.0.self_attn.q_proj.weight" in state and "encoder.layers.0.attn.Wqkv.weight" not in state
    out = tmp_path / "in_memory"
    out.mkdir()
    save_file(state, str(out / "model.safetensors"))
    (out / "config.json").write_text((tiny / "config.json").read_text())
    ids, mask = padded_batch([8, 5], seed=13)
    with torch.inference_mode():
        want = ref(input_ids=ids, attention_mask=mask).last_hidden_state
        got = load_nomic_text(out)(ids, mask)
    assert max_delta_on_tokens(got, want, mask) <= TOL


def test_normalise_keys_maps_and_drops():
    t = torch.zeros(2, 2)
    state = {
        "bert.embeddings.position_ids": t,
        "model.pooler.dense.weight": t,
        "layers.0.self_attn.q_proj.weight": torch.full((2, 2), 1.0),
        "layers.0.self_attn.k_proj.weight": torch.full((2, 2), 2.0),
        "layers.0.self_attn.v_proj.weight": torch.full((2, 2), 3.0),
        "rotary_emb.inv_freq": t,
        "rotary_emb.original_inv_freq": t,
        "layers.0.mlp.gate_proj.weight": t,
        "embeddings.LayerNorm.bias": t,
        "encoder.layers.1.attn.norm_factor": t,
        "layers.1.self_attn.q_proj.weight": t,
    }
    out = normalise_text_keys(state)
    assert sorted(out) == [
        "emb_ln.bias",
        "encoder.layers.0.attn.Wqkv.weight",
        "encoder.layers.0.mlp.fc12.weight",
        "layers.1.self_attn.q_proj.weight",
    ]  # an incomplete q/k/v stays, for the strict load
    assert out["encoder.layers.0.attn.Wqkv.weight"][:, 0].tolist() == [1, 1, 2, 2, 3, 3]
    with pytest.raises(CheckpointError, match="twice"):
        normalise_text_keys({"emb_ln.weight": t, "embeddings.LayerNorm.weight": t})


def _edit_state(d, edit):
    from safetensors.torch import save_file

    state = read_state_dict(d)
    edit(state)
    save_file(state, str(d / "model.safetensors"))


def _edit_config(d, **changes):
    cfg = json.loads((d / "config.json").read_text())
    cfg.update(changes)
    (d / "config.json").write_text(json.dumps(cfg))


BAD = {
    "missing": (
        lambda d: _edit_state(d, lambda s: s.pop("encoder.layers.1.mlp.fc2.weight")),
        CheckpointError,
        r"missing keys: encoder\.layers\.1\.mlp\.fc2\.weight",
    ),
    "unexpected": (
        lambda d: _edit_state(d, lambda s: s.update({"encoder.layers.0.attn.extra": torch.zeros(1)})),
        CheckpointError,
        r"unexpected keys: encoder\.layers\.0\.attn\.extra",
    ),
    "wrong_shape": (
        lambda d: _edit_state(d, lambda s: s.update({"emb_ln.weight": torch.ones(31)})),
        CheckpointError,
        r"wrong shapes: emb_ln\.weight \(31,\) \(expected \(32,\)\)",
    ),
    "truncated": (
        lambda d: (d / "model.safetensors").write_bytes((d / "model.safetensors").read_bytes()[:1000]),
        CheckpointError,
        "truncated or corrupt",
    ),
    "no_weights": (lambda d: (d / "model.safetensors").unlink(), CheckpointError, "has no weights"),
    "moe": (lambda d: _edit_config(d, num_experts=8, moe_every_n_layers=2), ValueError, "num_experts"),
    "prenorm": (lambda d: _edit_config(d, prenorm=True), ValueError, "prenorm"),
    "disagreeing_spellings": (lambda d: _edit_config(d, hidden_size=64), ValueError, "n_embd=32 but hidden_size=64"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_directories_give_one_clear_error(tiny, case):
    damage, error, message = BAD[case]
    damage(tiny)
    with pytest.raises(error, match=message):
        load_nomic_text(tiny)


def test_a_failed_strict_load_changes_nothing(tiny):
    model = load_nomic_text(tiny)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    bad = {k: torch.zeros_like(v) for k, v in before.items()}
    bad["emb_ln.bias"] = torch.zeros(5)
    with pytest.raises(CheckpointError):
        load_strict(model, bad, source="test")
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())


# ---------------------------------------------------------------------------------------------
# config reading, saving, directory detection
# ---------------------------------------------------------------------------------------------

PUBLISHED_LEGACY = {
    "model_type": "nomic_bert",
    "architectures": ["NomicBertModel"],
    "activation_function": "swiglu",
    "n_embd": 768,
    "n_head": 12,
    "n_layer": 12,
    "n_inner": 3072,
    "n_positions": 8192,
    "vocab_size": 30528,
    "pad_vocab_size_multiple": 64,
    "type_vocab_size": 2,
    "layer_norm_epsilon": 1e-12,
    "rotary_emb_base": 1000,
    "rotary_emb_fraction": 1.0,
    "rotary_emb_interleaved": False,
    "rotary_emb_scale_base": None,
    "rotary_scaling_factor": None,
    "max_trained_positions": 2048,
    "qkv_proj_bias": False,
    "mlp_fc1_bias": False,
    "mlp_fc2_bias": False,
    "prenorm": False,
    "causal": False,
}
PUBLISHED_NEW = {
    "model_type": "nomic_bert",
    "hidden_size": 768,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "intermediate_size": 3072,
    "hidden_act": "silu",
    "layer_norm_eps": 1e-12,
    "vocab_size": 30528,
    "max_position_embeddings": 2048,
    "rope_parameters": {"rope_theta": 1000.0, "rope_type": "default"},
}
REAL = NomicTextConfig(hidden=768, layers=12, heads=12, inner=3072, vocab_size=30528)


def test_config_reads_either_spelling_or_both():
    assert NomicTextConfig.from_hf_dict(PUBLISHED_LEGACY) == REAL
    assert NomicTextConfig.from_hf_dict(PUBLISHED_NEW) == REAL
    assert NomicTextConfig.from_hf_dict({**PUBLISHED_LEGACY, **PUBLISHED_NEW}) == REAL
    # n_inner as a float string; vocabulary padded to the multiple; gated width rounded up to 256
    odd = NomicTextConfig.from_hf_dict({**PUBLISHED_LEGACY, "n_inner": "3000.0", "vocab_size": 30522})
    assert (odd.inner, odd.vocab_size) == (3072, 30528)
    default_inner = dict(PUBLISHED_LEGACY)
    del default_inner["n_inner"]
    assert NomicTextConfig.from_hf_dict(default_inner).inner == 2048  # int(8 * 768 / 3)
    dynamic = {**PUBLISHED_NEW, "rope_parameters": {"rope_theta": 1000.0, "rope_type": "dynamic", "factor": 2.0}}
    assert NomicTextConfig.from_hf_dict(dynamic).rotary_scaling_factor == 2.0
    assert NomicTextConfig.from_hf_dict({**PUBLISHED_LEGACY, "rotary_scaling_factor": 2}).rotary_scaling_factor == 2.0


def test_config_defaults_rope_base_with_a_warning(caplog):
    legacy = {k: v for k, v in PUBLISHED_LEGACY.items() if k != "rotary_emb_base"}
    with caplog.at_level("WARNING"):
        assert NomicTextConfig.from_hf_dict(legacy).rope_theta == 1000.0
    assert "rotary base" in caplog.text


def test_config_infers_biases_from_the_checkpoint():
    legacy = {k: v for k, v in PUBLISHED_LEGACY.items() if not k.endswith("_bias")}
    keys = {"encoder.layers.0.attn.Wqkv.weight", "encoder.layers.0.attn.Wqkv.bias", "encoder.layers.0.mlp.fc2.bias"}
    cfg = NomicTextConfig.from_hf_dict(legacy, state_keys=keys)
    assert (cfg.qkv_proj_bias, cfg.mlp_fc1_bias, cfg.mlp_fc2_bias) == (True, False, True)
    assert not NomicTextConfig.from_hf_dict(legacy, state_keys=set()).qkv_proj_bias


@pytest.mark.parametrize(
    "field,value",
    [
        ("prenorm", True),
        ("parallel_block", True),
        ("use_rms_norm", True),
        ("causal", True),
        ("rotary_emb_scale_base", 512),
        ("num_experts", 8),
        ("moe_every_n_layers", 2),
        ("activation_function", "relu"),
        ("hidden_act", "relu"),
        ("rotary_emb_fraction", 0.0),
        ("model_type", "bert"),
        ("rope_parameters", {"rope_type": "yarn", "factor": 4.0}),
        ("num_heads_kv", 4),
        ("head_dim", 32),
    ],
)
def test_config_refusals_name_the_field(field, value):
    name = "rope_type" if field == "rope_parameters" else field
    with pytest.raises(ValueError, match=name):
        NomicTextConfig.from_hf_dict({**PUBLISHED_LEGACY, field: value})


def test_to_hf_dict_round_trips_and_only_claims_what_transformers_can_build():
    for cfg in (
        REAL,
        NomicTextConfig(hidden=32, layers=1, heads=2, inner=256, vocab_size=64, rotary_scaling_factor=2.0),
        NomicTextConfig(
            hidden=32,
            layers=1,
            heads=2,
            inner=64,
            vocab_size=64,
            qkv_proj_bias=True,
            rotary_emb_fraction=0.5,
            rotary_emb_interleaved=True,
            activation="gelu",
        ),
    ):
        d = json.loads(json.dumps(cfg.to_hf_dict()))
        assert NomicTextConfig.from_hf_dict(d) == cfg
        native_ok = cfg.gated and not cfg.qkv_proj_bias
        assert ("hidden_size" in d) == native_ok


def test_save_and_reload(tmp_path, tiny):
    native = load_nomic_text(tiny)
    out = save_nomic_text(native, tmp_path / "saved")
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]
    assert set(read_state_dict(out)) == set(read_state_dict(tiny))
    ids, mask = padded_batch([7, 3])
    with torch.inference_mode():
        want = native(ids, mask)
        assert torch.equal(load_nomic_text(out)(ids, mask), want)
        # transformers reads the saved directory as the same model
        assert (
            max_delta_on_tokens(reference_model(out)(input_ids=ids, attention_mask=mask).last_hidden_state, want, mask)
            <= TOL
        )


def test_save_over_a_copy_keeps_metadata_and_rewrites_the_model_keys(tmp_path):
    """What a text tower's save does: copy the directory, then save the weights over it."""
    d = write_tiny_nomic_text_dir(tmp_path / "m", auto_map=True)
    _edit_config(d, _name_or_path="nomic-ai/nomic-embed-text-v1.5", hidden_size=32, pad_vocab_size_multiple=64)
    model = load_nomic_text(d, rotary_scaling_factor=2.0)
    save_nomic_text(model, d)
    cfg = json.loads((d / "config.json").read_text())
    assert cfg["_name_or_path"] == "nomic-ai/nomic-embed-text-v1.5" and "auto_map" in cfg
    assert cfg["rotary_scaling_factor"] == 2.0 and cfg["rope_parameters"]["rope_type"] == "dynamic"
    assert "pad_vocab_size_multiple" not in cfg and "use_flash_attn" in cfg  # interpreted keys rewritten only
    assert load_nomic_text(d).config == model.config


def test_is_nomic_text_dir(tmp_path, tiny):
    def cfg_dir(name, cfg):
        d = tmp_path / name
        d.mkdir()
        (d / "config.json").write_text(json.dumps(cfg))
        return d

    auto_text = {
        "auto_map": {
            "AutoModel": "nomic-ai/nomic-bert-2048--modeling_hf_nomic_bert.NomicBertModel",
            "AutoTokenizer": [None, "BertTokenizerFast"],
        }
    }
    auto_vision = {"auto_map": {"AutoModel": "nomic-ai/nomic-bert-2048--modeling_hf_nomic_bert.NomicVisionModel"}}
    assert is_nomic_text_dir(tiny)
    assert is_nomic_text_dir(cfg_dir("auto_map_only", auto_text))
    assert is_nomic_text_dir(cfg_dir("mlm", {"model_type": "nomic_bert", "architectures": ["NomicBertForPreTraining"]}))
    assert not is_nomic_text_dir(cfg_dir("vision", {"model_type": "nomic_bert", "architectures": ["NomicVisionModel"]}))
    assert not is_nomic_text_dir(cfg_dir("vision_auto", {"model_type": "nomic_bert", **auto_vision}))
    assert not is_nomic_text_dir(cfg_dir("bert", {"model_type": "bert", "architectures": ["BertModel"]}))
    assert not is_nomic_text_dir(tmp_path / "nowhere")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    assert not is_nomic_text_dir(broken)


# ---------------------------------------------------------------------------------------------
# the real nomic-embed-text v1 / v1.5 shapes
# ---------------------------------------------------------------------------------------------

PER_LAYER = {
    "attn.Wqkv.weight": (2304, 768),
    "attn.out_proj.weight": (768, 768),
    "mlp.fc11.weight": (3072, 768),
    "mlp.fc12.weight": (3072, 768),
    "mlp.fc2.weight": (768, 3072),
    "norm1.weight": (768,),
    "norm1.bias": (768,),
    "norm2.weight": (768,),
    "norm2.bias": (768,),
}
REAL_KEYS = {
    "embeddings.word_embeddings.weight": (30528, 768),
    "embeddings.token_type_embeddings.weight": (2, 768),
    "emb_ln.weight": (768,),
    "emb_ln.bias": (768,),
    **{f"encoder.layers.{i}.{k}": shape for i in range(12) for k, shape in PER_LAYER.items()},
}


def test_real_shapes_on_meta():
    config = NomicTextConfig.from_hf_dict({**PUBLISHED_LEGACY, **PUBLISHED_NEW})
    with torch.device("meta"):
        model = NomicBertText(config)
        out = model(torch.zeros(2, 9, dtype=torch.long))
    assert sum(p.numel() for p in model.parameters()) == 136_731_648
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == REAL_KEYS
    assert out.shape == (2, 9, 768)


def test_fake_directory_helper_writes_what_it_promises(tmp_path):
    d = write_tiny_nomic_text_dir(
        tmp_path / "st", sentence_transformers=True, prompts={"search_query": "search_query: "}
    )
    names = sorted(p.name for p in d.iterdir())
    assert names == [
        "1_Pooling",
        "config.json",
        "config_sentence_transformers.json",
        "model.safetensors",
        "modules.json",
        "sentence_bert_config.json",
    ]
    assert json.loads((d / "1_Pooling" / "config.json").read_text())["pooling_mode_mean_tokens"]
    assert read_state_dict(d)["embeddings.word_embeddings.weight"].shape == (30528, 32)
    assert fakes_nomic_text.tiny_config_dict()["n_inner"] == 256
