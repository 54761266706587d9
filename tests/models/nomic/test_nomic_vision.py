"""Native Nomic Embed Vision: parity with independent references, the checkpoint layout, loading.

References: timm's `Eva` for the trunk (the published trunk is an EVA02-B/16), explicit formulas
written here for the patch flattening and the selector, and OpenVINO for export. Weights are seeded
random values perturbed away from identity (fakes_nomic_vision.perturb_), so a wrong layout gives
a large difference rather than a small one.
"""

from __future__ import annotations

import json
import math
import warnings
from functools import partial
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from latentspace.models.nomic.preprocess import NomicImagePreprocessor
from latentspace.models.nomic.vision import NomicVision, eva_rope_2d
from latentspace.models.nomic.vision_config import NomicVisionConfig
from latentspace.models.nomic.vision_dir import (
    is_nomic_vision_dir,
    load_nomic_vision,
    normalise_vision_keys,
    save_nomic_vision,
)
from latentspace.models.nomic.weights import CheckpointError

from fakes_nomic_vision import perturb_, tiny_vision_config, write_tiny_nomic_vision_dir

# The published nomic-embed-vision-v1.5 config.json fields that matter (values as published,
# including n_inner as a float).
PUBLISHED_CONFIG = {
    "activation_function": "swiglu",
    "architectures": ["NomicVisionModel"],
    "attn_pdrop": 0.0,
    "auto_map": {
        "AutoConfig": "nomic-ai/nomic-bert-2048--configuration_hf_nomic_bert.NomicBertConfig",
        "AutoModel": "nomic-ai/nomic-bert-2048--modeling_hf_nomic_bert.NomicVisionModel",
    },
    "causal": False,
    "global_pool": None,
    "img_size": 224,
    "layer_norm_epsilon": 1e-06,
    "layer_scale": False,
    "learned_pos_embedding": False,
    "mask_token": False,
    "mlp_fc1_bias": True,
    "mlp_fc2_bias": True,
    "model_type": "nomic_bert",
    "n_embd": 768,
    "n_head": 12,
    "n_inner": 2048.0,
    "n_layer": 12,
    "no_cls_token": False,
    "no_embed_class": False,
    "no_last_ln": True,
    "norm_mlp": True,
    "num_channels": 3,
    "parallel_block": False,
    "patch_embed_bias": True,
    "patch_size": 16,
    "prenorm": True,
    "qkv_proj_bias": True,
    "ref_feat_shape": [14, 14],
    "register_tokens": 0,
    "rotary_emb_base": 10000,
    "rotary_emb_fraction": 0,
    "sinusoidal_pos_embedding": False,
    "use_pos_embed": True,
    "use_rms_norm": False,
    "use_rotary_pos_emb": True,
}


def _tiny(seed: int = 0, **kw) -> NomicVision:
    return perturb_(NomicVision(NomicVisionConfig.from_hf_dict(tiny_vision_config(**kw))), seed).eval()


# ---------------------------------------------------------------------------------------------- T5


def _timm_eva_from_native(native: NomicVision) -> nn.Module:
    """timm Eva with the native weights mapped onto it (timm names checked against timm 1.0.x)."""
    from timm.models.eva import Eva

    cfg = native.config
    d, p = cfg.n_embd, cfg.patch_size
    eva = Eva(
        img_size=cfg.img_size[0],
        patch_size=p,
        embed_dim=d,
        depth=cfg.n_layer,
        num_heads=cfg.n_head,
        qkv_bias=True,
        qkv_fused=True,
        mlp_ratio=cfg.mlp_hidden / d,
        swiglu_mlp=True,
        scale_mlp=True,
        use_rot_pos_emb=True,
        ref_feat_shape=cfg.ref_feat_shape,
        use_abs_pos_emb=True,
        class_token=True,
        num_classes=0,
        norm_layer=partial(nn.LayerNorm, eps=1e-6),
    ).eval()
    for blk in eva.blocks:
        blk.mlp.norm.eps = 1e-5  # the reference's MLP hidden norm uses nn.LayerNorm's default eps
    sd = native.state_dict()
    mapped = {
        "cls_token": sd["embeddings.cls_token"],
        "pos_embed": sd["embeddings.pos_embed"],
        # native in-features are (c, p1, p2): exactly a conv kernel (D, C, p, p) flattened
        "patch_embed.proj.weight": sd["embeddings.proj.weight"].reshape(d, 3, p, p),
        "patch_embed.proj.bias": sd["embeddings.proj.bias"],
    }
    renames = [
        ("attn.proj", "attn.out_proj"),
        ("mlp.fc1_x", "mlp.fc11"),
        ("mlp.fc1_g", "mlp.fc12"),
        ("mlp.norm", "mlp.norm"),
        ("mlp.fc2", "mlp.fc2"),
        ("norm1", "norm1"),
        ("norm2", "norm2"),
    ]
    for i in range(cfg.n_layer):
        t, n = f"blocks.{i}.", f"layers.{i}."
        mapped[t + "attn.qkv.weight"] = sd[n + "attn.Wqkv.weight"]
        bias = sd[n + "attn.Wqkv.bias"]
        mapped[t + "attn.q_bias"] = bias[:d]  # timm keeps k_bias as a zero buffer
        mapped[t + "attn.v_bias"] = bias[2 * d :]
        for timm_name, native_name in renames:
            for suffix in ("weight", "bias"):
                mapped[f"{t}{timm_name}.{suffix}"] = sd[f"{n}{native_name}.{suffix}"]
    missing, unexpected = eva.load_state_dict(mapped, strict=False)
    assert not unexpected and set(missing) <= {"fc_norm.weight", "fc_norm.bias", "norm.weight", "norm.bias"}, (
        missing,
        unexpected,
    )
    return eva


def test_trunk_matches_timm_eva():
    """T5: patch flatten order, CLS + pos_embed, 2-D RoPE (bands, grid order, interleave, CLS not
    rotated), pre-LN blocks, SwiGLU with hidden LN (eps 1e-5) agree with timm's EVA."""
    native = _tiny(1, img_size=64, hidden=128, layers=2, heads=4, inner=256)
    with torch.no_grad():
        for layer in native.layers:  # timm has no k bias; the published checkpoint stores zeros there
            layer.attn.Wqkv.bias[128:256] = 0
    eva = _timm_eva_from_native(native)
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        tokens, rope = eva._pos_embed(eva.patch_embed(x))
        for blk in eva.blocks:
            tokens = blk(tokens, rope=rope)
        ours = native.trunk(x)
    delta = (ours - tokens).abs().max().item()
    scale = tokens.abs().max().item()
    print(f"trunk vs timm Eva: max|delta| = {delta:.3g} at output scale {scale:.3g}")
    assert ours.shape == (2, 17, 128)
    assert scale > 1  # the perturbed weights give a non-trivial output
    assert delta <= 1e-4


def test_rope_tables_match_timm_including_rescaled_grid():
    """The 2-D RoPE tables equal timm's, also when the grid differs from ref_feat_shape (EVA rescale)."""
    from timm.layers.pos_embed_sincos import RotaryEmbeddingCat

    for grid, ref in [((4, 4), (4, 4)), ((4, 6), (14, 14)), ((14, 14), (14, 14))]:
        rope = RotaryEmbeddingCat(dim=32, in_pixels=False, feat_shape=list(grid), ref_feat_shape=list(ref))
        sin_t, cos_t = rope.get_embed().chunk(2, -1)
        cos, sin = eva_rope_2d(grid, 32, ref)
        assert cos.shape == (grid[0] * grid[1], 32)
        torch.testing.assert_close(cos, cos_t, rtol=0, atol=1e-6)
        torch.testing.assert_close(sin, sin_t, rtol=0, atol=1e-6)


def test_patch_embedding_is_the_published_rearrange():
    """The conv patchify equals the reference's "b c (h p1) (w p2) -> b (h w) (c p1 p2)" + Linear,
    then CLS prepended and the position table added (written out explicitly here)."""
    native = _tiny(2, img_size=48, hidden=32, patch_size=16)
    x = torch.randn(3, 3, 48, 48, generator=torch.Generator().manual_seed(1))
    emb = native.embeddings
    b, c, p, g = 3, 3, 16, 3
    patches = x.reshape(b, c, g, p, g, p).permute(0, 2, 4, 1, 3, 5).reshape(b, g * g, c * p * p)
    expected = patches @ emb.proj.weight.T + emb.proj.bias
    expected = torch.cat([emb.cls_token.expand(b, 1, -1), expected], 1) + emb.pos_embed
    with torch.no_grad():
        torch.testing.assert_close(emb(x), expected, rtol=0, atol=1e-5)


# ---------------------------------------------------------------------------------------------- T6


def test_selector_and_embedding_follow_the_formula():
    """T6: one latent query, [K; V] block-major, per-head softmax(q k^T / sqrt(hd)) v, out_proj,
    LN, SwiGLU (no hidden norm) -> p; output = h + p on every token; embedding = normalize(out[:, 0])."""
    model = _tiny(3, img_size=32, hidden=32, heads=4, inner=64)  # 64 -> 256 wide, as the reference rounds
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    s = model.selector
    heads, hd, d = 4, 8, 32
    with torch.no_grad():
        h = model.trunk(x)  # (B, L, D)
        q = F.linear(s.attn.latent[0], s.attn.Wq.weight, s.attn.Wq.bias)  # (1, D): one query, shared
        kv = F.linear(h, s.attn.Wkv.weight, s.attn.Wkv.bias)  # (B, L, 2D)
        k, v = kv[..., :d], kv[..., d:]
        heads_out = []
        for i in range(heads):
            sl = slice(i * hd, (i + 1) * hd)
            scores = (q[:, sl] @ k[..., sl].transpose(1, 2)) / math.sqrt(hd)  # (B, 1, L)
            heads_out.append(torch.softmax(scores, -1) @ v[..., sl])  # (B, 1, hd)
        o = F.linear(torch.cat(heads_out, -1), s.attn.out_proj.weight, s.attn.out_proj.bias)
        n = F.layer_norm(o, (d,), s.norm1.weight, s.norm1.bias, eps=1e-6)
        p = F.linear(
            F.linear(n, s.mlp.fc11.weight, s.mlp.fc11.bias) * F.silu(F.linear(n, s.mlp.fc12.weight, s.mlp.fc12.bias)),
            s.mlp.fc2.weight,
            s.mlp.fc2.bias,
        )
        expected = h + p  # (B, 1, D) broadcast onto every token
        out = model(x)
        emb = model.embed(x)
    assert s.mlp.fc11.weight.shape == (256, 32) and isinstance(s.mlp.norm, nn.Identity)
    with torch.no_grad():
        pooled = model.selector(h)
    assert pooled.shape == (2, 1, 32)  # one vector per image ...
    assert torch.equal(out, h + pooled)  # ... added to every token
    delta_p = (pooled - p).abs().max().item()
    delta = (out - expected).abs().max().item()
    print(
        f"selector vs formula: max|delta| = {delta_p:.3g} on the pooled vector (scale "
        f"{p.abs().max().item():.3g}), {delta:.3g} on the output (scale {expected.abs().max().item():.3g})"
    )
    assert delta_p <= 1e-6
    # the output adds p to tokens of size ~10, where one float32 ulp is ~1e-6
    torch.testing.assert_close(out, expected, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(emb, F.normalize(expected[:, 0], dim=-1), rtol=0, atol=1e-6)
    assert torch.equal(emb, F.normalize(out[:, 0], dim=-1))  # embed is exactly forward's token 0
    assert emb.dtype == torch.float32
    torch.testing.assert_close(emb.norm(dim=-1), torch.ones(2))


# ------------------------------------------------------------------------------- real-shape smoke

REAL_SHAPES_FIXED = {
    "embeddings.cls_token": (1, 1, 768),
    "embeddings.pos_embed": (1, 197, 768),
    "embeddings.proj.weight": (768, 768),
    "embeddings.proj.bias": (768,),
    "selector.attn.latent": (1, 1, 768),
    "selector.attn.Wq.weight": (768, 768),
    "selector.attn.Wq.bias": (768,),
    "selector.attn.Wkv.weight": (1536, 768),
    "selector.attn.Wkv.bias": (1536,),
    "selector.attn.out_proj.weight": (768, 768),
    "selector.attn.out_proj.bias": (768,),
    "selector.mlp.fc11.weight": (2048, 768),
    "selector.mlp.fc11.bias": (2048,),
    "selector.mlp.fc12.weight": (2048, 768),
    "selector.mlp.fc12.bias": (2048,),
    "selector.mlp.fc2.weight": (768, 2048),
    "selector.mlp.fc2.bias": (768,),
    "selector.norm1.weight": (768,),
    "selector.norm1.bias": (768,),
}
REAL_SHAPES_PER_LAYER = {
    "norm1.weight": (768,),
    "norm1.bias": (768,),
    "attn.Wqkv.weight": (2304, 768),
    "attn.Wqkv.bias": (2304,),
    "attn.out_proj.weight": (768, 768),
    "attn.out_proj.bias": (768,),
    "mlp.fc11.weight": (2048, 768),
    "mlp.fc11.bias": (2048,),
    "mlp.fc12.weight": (2048, 768),
    "mlp.fc12.bias": (2048,),
    "mlp.norm.weight": (2048,),
    "mlp.norm.bias": (2048,),
    "mlp.fc2.weight": (768, 2048),
    "mlp.fc2.bias": (768,),
    "norm2.weight": (768,),
    "norm2.bias": (768,),
}


def test_real_shape_model_has_the_published_keys_and_size():
    """The published config builds (on the meta device: no memory) a model with exactly the
    checkpoint's keys and shapes, 92,946,688 parameters, and (B, 197, 768) outputs."""
    config = NomicVisionConfig.from_hf_dict(PUBLISHED_CONFIG)
    assert config.n_inner == 2048 and config.mlp_hidden == 2048 and config.num_tokens == 197
    with torch.device("meta"):
        model = NomicVision(config)
        out = model(torch.empty(2, 3, 224, 224))
        emb = model.embed(torch.empty(2, 3, 224, 224))
    expected = dict(REAL_SHAPES_FIXED)
    for i in range(12):
        expected.update({f"layers.{i}.{k}": v for k, v in REAL_SHAPES_PER_LAYER.items()})
    got = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert got == expected  # rope tables are non-persistent: not in the state dict
    assert sum(p.numel() for p in model.parameters()) == 92_946_688
    # eps: 1e-6 from the config everywhere except the MLP hidden norm (1e-5). The T5 tolerance alone
    # would not catch a 1e-6 there (it moves the tiny trunk by ~8e-5), so check it structurally.
    assert model.layers[0].norm1.eps == model.layers[0].norm2.eps == model.selector.norm1.eps == 1e-6
    assert model.layers[0].mlp.norm.eps == 1e-5
    assert out.shape == (2, 197, 768) and emb.shape == (2, 768)


# ------------------------------------------------------------------------------------------ config


def test_config_reads_the_published_file_and_round_trips():
    config = NomicVisionConfig.from_hf_dict(PUBLISHED_CONFIG)
    assert (config.img_size, config.patch_size, config.n_embd, config.n_head, config.n_layer) == (
        (224, 224),
        16,
        768,
        12,
        12,
    )
    assert config.layer_norm_epsilon == 1e-6 and config.norm_mlp and config.prenorm
    assert config.ref_feat_shape == (14, 14) and config.grid == (14, 14)
    written = config.to_hf_dict()
    assert written["n_inner"] == 2048.0 and isinstance(written["n_inner"], float)  # published spelling
    assert written["architectures"] == ["NomicVisionModel"] and written["model_type"] == "nomic_bert"
    for key, value in written.items():
        if key in PUBLISHED_CONFIG:
            assert value == PUBLISHED_CONFIG[key], key
    assert NomicVisionConfig.from_hf_dict(json.loads(json.dumps(written))) == config


@pytest.mark.parametrize(
    "change, field",
    [
        ({"register_tokens": 4}, "register_tokens"),
        ({"no_cls_token": True}, "no_cls_token"),
        ({"learned_pos_embedding": True}, "learned_pos_embedding"),
        ({"sinusoidal_pos_embedding": True}, "sinusoidal_pos_embedding"),
        ({"global_pool": "avg"}, "global_pool"),
        ({"prenorm": False}, "prenorm"),
        ({"prenorm": None}, "prenorm"),  # absent: the reference default is post-LN
        ({"mask_token": True}, "mask_token"),
        ({"no_embed_class": True}, "no_embed_class"),
        ({"activation_function": "gelu"}, "activation_function"),
        ({"rotary_emb_fraction": 0.5}, "rotary_emb_fraction"),
        ({"parallel_block": True}, "parallel_block"),
        ({"n_head": 5}, "n_head"),
        ({"n_embd": None}, "n_embd"),
    ],
)
def test_config_refusals_name_the_field(change, field):
    d = {**PUBLISHED_CONFIG, **change}
    d = {k: v for k, v in d.items() if v is not None or k == "global_pool"}
    with pytest.raises(ValueError, match=field):
        NomicVisionConfig.from_hf_dict(d)


def test_config_accepts_direct_construction_with_json_spellings():
    config = NomicVisionConfig(
        img_size=32,
        patch_size=16,
        n_embd=32,
        n_head=4,
        n_layer=1,
        prenorm=True,
        use_rotary_pos_emb=True,
        ref_feat_shape=[2, 2],
    )  # type: ignore[arg-type]
    assert config.img_size == (32, 32) and config.ref_feat_shape == (2, 2) and config.num_tokens == 5
    assert config.mlp_hidden == 256  # n_inner absent: int(8 * 32 / 3) = 85, rounded up to 256


def test_optional_parts_follow_the_config():
    """use_pos_embed / norm_mlp / biases false simply leave those tensors out."""
    d = {
        **tiny_vision_config(),
        "use_pos_embed": False,
        "norm_mlp": False,
        "qkv_proj_bias": False,
        "patch_embed_bias": False,
        "use_rotary_pos_emb": False,
    }
    model = NomicVision(NomicVisionConfig.from_hf_dict(d)).eval()
    keys = set(model.state_dict())
    assert "embeddings.pos_embed" not in keys and "layers.0.mlp.norm.weight" not in keys
    assert "layers.0.attn.Wqkv.bias" not in keys and "embeddings.proj.bias" not in keys
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 5, 32)


def test_wrong_input_size_is_refused():
    model = _tiny()
    with pytest.raises(ValueError, match="fixed input size"):
        model.embed(torch.randn(1, 3, 48, 48))
    with pytest.raises(ValueError, match="fixed input size"):
        model(torch.randn(3, 32, 32))


# ---------------------------------------------------------------------------------------- loading


def test_is_nomic_vision_dir(tmp_path: Path):
    def write(name: str, config) -> Path:
        d = tmp_path / name
        d.mkdir()
        (d / "config.json").write_text(config if isinstance(config, str) else json.dumps(config))
        return d

    assert is_nomic_vision_dir(write("published", PUBLISHED_CONFIG))
    assert is_nomic_vision_dir(
        write(
            "auto_map_only",
            {
                "model_type": "nomic_bert",
                "auto_map": {"AutoModel": "nomic-ai/nomic-bert-2048--modeling_hf_nomic_bert.NomicVisionModel"},
            },
        )
    )
    assert not is_nomic_vision_dir(
        write(
            "text",
            {
                "model_type": "nomic_bert",
                "architectures": ["NomicBertModel"],
                "auto_map": {"AutoModel": "nomic-ai/nomic-bert-2048--modeling_hf_nomic_bert.NomicBertModel"},
            },
        )
    )
    assert not is_nomic_vision_dir(write("model_type_only", {"model_type": "nomic_bert"}))
    assert not is_nomic_vision_dir(write("broken", "{not json"))
    assert not is_nomic_vision_dir(tmp_path / "does-not-exist")


def test_normalise_vision_keys():
    t = torch.zeros(1)
    state = {
        "trunk.embeddings.proj.weight": t,
        "trunk.layers.0.attn.norm_factor": t,
        "trunk.embeddings.rope.pos_embed": t,
        "trunk.selector.norm1.weight": t,
    }
    assert set(normalise_vision_keys(state)) == {"embeddings.proj.weight", "selector.norm1.weight"}
    assert set(normalise_vision_keys({"vision_model.a": t, "vision_model.b": t})) == {"a", "b"}
    # a prefix on only some keys is left alone (the strict load will name them)
    assert set(normalise_vision_keys({"model.a": t, "b": t})) == {"model.a", "b"}


def test_fake_dir_loads_and_save_load_round_trips(tmp_path: Path):
    src = write_tiny_nomic_vision_dir(tmp_path / "src", seed=5)
    assert json.loads((src / "config.json").read_text())["n_inner"] == 256.0  # a float, as published
    assert is_nomic_vision_dir(src)
    model = load_nomic_vision(src)
    assert not model.training
    x = NomicImagePreprocessor.from_dir(src).batch([_image(40, 30), _image(20, 64)])
    assert x.shape == (2, 3, 32, 32)
    out = model.embed(x)
    save_nomic_vision(model, tmp_path / "copy")
    assert {p.name for p in (tmp_path / "copy").iterdir()} == {
        "model.safetensors",
        "config.json",
        "preprocessor_config.json",
    }
    again = load_nomic_vision(tmp_path / "copy")
    assert torch.equal(again.embed(x), out)
    assert torch.equal(again(x), model(x))
    assert NomicImagePreprocessor.from_dir(tmp_path / "copy") == NomicImagePreprocessor.from_dir(src)


def test_prefixed_torch_bin_loads(tmp_path: Path):
    src = write_tiny_nomic_vision_dir(tmp_path / "src", seed=6)
    model = load_nomic_vision(src)
    other = tmp_path / "bin"
    other.mkdir()
    (other / "config.json").write_text((src / "config.json").read_text())
    state = {f"vision_model.{k}": v for k, v in model.state_dict().items()}
    state["vision_model.layers.0.attn.norm_factor"] = torch.tensor(2.0)
    torch.save(state, other / "pytorch_model.bin")
    x = torch.randn(1, 3, 32, 32)
    assert torch.equal(load_nomic_vision(other).embed(x), model.embed(x))


def _image(w: int, h: int):
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(w * 1000 + h)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


def _edit_weights(directory: Path, edit) -> None:
    from safetensors.torch import load_file, save_file

    state = load_file(str(directory / "model.safetensors"))
    edit(state)
    save_file(state, str(directory / "model.safetensors"))


def _edit_config(directory: Path, **changes) -> None:
    config = json.loads((directory / "config.json").read_text())
    config.update(changes)
    (directory / "config.json").write_text(json.dumps(config))


def _truncate(directory: Path) -> None:
    path = directory / "model.safetensors"
    path.write_bytes(path.read_bytes()[:-1000])


BAD_DIRS = {
    "missing key": (
        lambda d: _edit_weights(d, lambda s: s.pop("selector.attn.latent")),
        CheckpointError,
        r"missing keys: selector\.attn\.latent",
    ),
    "unexpected key": (
        lambda d: _edit_weights(d, lambda s: s.update({"head.weight": torch.zeros(2)})),
        CheckpointError,
        r"unexpected keys: head\.weight",
    ),
    "wrong shape": (
        lambda d: _edit_weights(d, lambda s: s.update({"embeddings.pos_embed": torch.zeros(1, 4, 32)})),
        CheckpointError,
        r"wrong shapes: embeddings\.pos_embed \(1, 4, 32\) \(expected \(1, 5, 32\)\)",
    ),
    "truncated safetensors": (_truncate, CheckpointError, "truncated or corrupt"),
    "no weights": (lambda d: (d / "model.safetensors").unlink(), CheckpointError, "has no weights"),
    "no config": (lambda d: (d / "config.json").unlink(), CheckpointError, "config.json is missing"),
    "register tokens": (lambda d: _edit_config(d, register_tokens=4), ValueError, "register_tokens"),
    "post-LN": (lambda d: _edit_config(d, prenorm=False), ValueError, "prenorm"),
}


@pytest.mark.parametrize("case", sorted(BAD_DIRS))
def test_bad_dirs_give_one_clear_error(tmp_path: Path, case: str):
    directory = write_tiny_nomic_vision_dir(tmp_path / "m")
    damage, error, message = BAD_DIRS[case]
    damage(directory)
    with pytest.raises(error, match=message) as info:
        load_nomic_vision(directory)
    assert str(directory) in str(info.value)  # the message says which directory / file
    if error is CheckpointError and case in ("missing key", "unexpected key", "wrong shape"):
        assert "Nothing was loaded" in str(info.value)


# ------------------------------------------------------------------------------------------ export


def test_openvino_export_matches_pytorch(tmp_path: Path):
    """The module traces (no einops, no data-dependent branches) and runs in OpenVINO fp32, for a
    batch size other than the traced one."""
    ov = pytest.importorskip("openvino", reason="openvino is not installed")

    class Embed(nn.Module):
        def __init__(self, model: NomicVision) -> None:
            super().__init__()
            self.model = model

        def forward(self, pixels: torch.Tensor) -> torch.Tensor:
            return self.model.embed(pixels)

    model = load_nomic_vision(write_tiny_nomic_vision_dir(tmp_path / "m", seed=7))
    example = torch.randn(2, 3, 32, 32)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit.trace deprecation notices
        graph = ov.convert_model(Embed(model).eval(), example_input=example)
    graph.reshape({graph.inputs[0]: ov.PartialShape([-1, 3, 32, 32])})
    compiled = ov.Core().compile_model(graph, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    got = torch.from_numpy(compiled.create_infer_request().infer({0: x.numpy()})[0].copy())
    with torch.no_grad():
        want = model.embed(x)
    delta = (got - want).abs().max().item()
    print(f"openvino vs pytorch: max|delta| = {delta:.3g}")
    assert got.shape == (3, 32) and delta <= 1e-4


def test_torch_export_has_no_graph_breaks():
    """torch.export (dynamic batch) captures the whole forward pass and agrees with eager."""
    model = _tiny(8)

    class Embed(nn.Module):
        def __init__(self, m: NomicVision) -> None:
            super().__init__()
            self.m = m

        def forward(self, pixels: torch.Tensor) -> torch.Tensor:
            return self.m.embed(pixels)

    batch = torch.export.Dim("batch", min=1, max=64)
    program = torch.export.export(Embed(model), (torch.randn(2, 3, 32, 32),), dynamic_shapes=({0: batch},))
    x = torch.randn(5, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(program.module()(x), model.embed(x), rtol=0, atol=1e-6)
