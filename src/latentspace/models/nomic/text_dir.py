"""nomic-embed-text directories: recognising one, reading its weights strictly into the NomicBERT
module (whatever the checkpoint's key spelling), and writing one back in the published layout."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from latentspace import atomic
from latentspace.models.nomic.text import NomicBertText
from latentspace.models.nomic.text_config import MODEL_TYPE, NomicTextConfig
from latentspace.models.nomic.weights import (
    CONFIG_NAME,
    SAFETENSORS,
    CheckpointError,
    load_strict,
    read_config,
    read_state_dict,
)


def is_nomic_text_dir(path: str | Path) -> bool:
    """True for a directory whose config.json describes a NomicBERT *text* model.

    Nomic's vision model shares `model_type: nomic_bert` (and the remote-code file), so vision is
    recognised by `architectures` / `auto_map` naming NomicVisionModel, never by model_type."""
    try:
        d = read_config(path)
    except CheckpointError:
        return False
    architectures = [str(a) for a in (d.get("architectures") or [])]
    auto_map = d.get("auto_map") or {}
    values = auto_map.values() if isinstance(auto_map, dict) else []
    # a value is a class path, or a list of them (AutoTokenizer: [slow, fast], either may be null)
    targets = [str(t) for v in values for t in (v if isinstance(v, (list, tuple)) else [v]) if t is not None]
    if any(a.endswith("NomicVisionModel") for a in architectures + targets):
        return False
    if d.get("model_type") == MODEL_TYPE:
        return True
    return any(t.endswith(("NomicBertModel", "NomicBertForPreTraining")) for t in targets)


_PREFIX = re.compile(r"^(?:bert|model|nomic_bert)\.")
_DROP = re.compile(
    r"^(?:cls\.|pooler\.|lm_head\.)|inv_freq$|\.norm_factor$|^embeddings\.(?:position_ids|token_type_ids)$"
)
# transformers' in-memory names (>= 5) -> checkpoint names; q/k/v are handled separately.
_RENAMES = [
    (re.compile(r"^layers\.(\d+)\.self_attn\.o_proj\."), r"encoder.layers.\1.attn.out_proj."),
    (re.compile(r"^layers\.(\d+)\.mlp\.up_proj\."), r"encoder.layers.\1.mlp.fc11."),
    (re.compile(r"^layers\.(\d+)\.mlp\.gate_proj\."), r"encoder.layers.\1.mlp.fc12."),
    (re.compile(r"^layers\.(\d+)\.mlp\.down_proj\."), r"encoder.layers.\1.mlp.fc2."),
    (re.compile(r"^layers\.(\d+)\.post_attention_layernorm\."), r"encoder.layers.\1.norm1."),
    (re.compile(r"^layers\.(\d+)\.post_mlp_layernorm\."), r"encoder.layers.\1.norm2."),
    (re.compile(r"^embeddings\.LayerNorm\."), r"emb_ln."),
]
_QKV = re.compile(r"^layers\.(\d+)\.self_attn\.([qkv])_proj\.(weight|bias)$")


def normalise_text_keys(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Checkpoint key names from any NomicBERT save: strip a `bert.` / `model.` / `nomic_bert.`
    prefix (MLM and wrapper checkpoints), drop heads and non-weight buffers (`cls.*`, `pooler.*`,
    rotary `inv_freq`, `norm_factor`, `position_ids`), and map transformers' in-memory names
    (separate q/k/v, `up_proj`, ...) back to the published ones (fused `Wqkv` = cat(q, k, v)).
    Anything else is kept, so a strict load reports it. Returns a new dict."""
    out: dict[str, torch.Tensor] = {}
    qkv: dict[tuple[str, str], dict[str, torch.Tensor]] = {}

    def put(key: str, value: torch.Tensor, original: str) -> None:
        if key in out:
            raise CheckpointError(f"the checkpoint holds {key} twice (once as {original})")
        out[key] = value

    for key, value in state.items():
        name = _PREFIX.sub("", key, count=1)
        if _DROP.search(name):
            continue
        m = _QKV.match(name)
        if m:
            qkv.setdefault((m.group(1), m.group(3)), {})[m.group(2)] = value
            continue
        for pattern, repl in _RENAMES:
            if pattern.match(name):
                name = pattern.sub(repl, name, count=1)
                break
        put(name, value, key)
    for (layer, kind), parts in sorted(qkv.items()):
        if set(parts) == {"q", "k", "v"}:
            put(
                f"encoder.layers.{layer}.attn.Wqkv.{kind}",
                torch.cat([parts["q"], parts["k"], parts["v"]], 0),
                f"layers.{layer}.self_attn.q/k/v_proj.{kind}",
            )
        else:  # incomplete: keep the names so the strict load reports them
            for p, value in parts.items():
                put(f"layers.{layer}.self_attn.{p}_proj.{kind}", value, p)
    return out


def load_nomic_text(directory: str | Path, *, rotary_scaling_factor: float | None = None) -> NomicBertText:
    """A NomicBERT text model from a local directory (config.json + weights), in eval mode.

    Every key must match (missing, unexpected or wrong-shape tensors raise one CheckpointError
    naming them); a model is returned fully loaded or not at all. `rotary_scaling_factor`
    overrides config.json's (None keeps it: null in the published configs, i.e. no scaling)."""
    directory = Path(directory)
    raw = read_config(directory)
    state = normalise_text_keys(read_state_dict(directory))
    config = NomicTextConfig.from_hf_dict(raw, state_keys=set(state))
    # Build without initialising (meta), then give it uninitialised storage: every parameter is
    # overwritten by the strict load below, so random init would be wasted time.
    with torch.device("meta"):
        model = NomicBertText(config, rotary_scaling_factor=rotary_scaling_factor)
    model = model.to_empty(device="cpu")
    load_strict(model, state, source=str(directory))
    return model.eval()


# Every config.json key whose value `from_hf_dict` (or a transformers loader) interprets: when
# saving over an existing config.json these are all rewritten, so no stale value can contradict
# the model; any other key (`_name_or_path`, `auto_map`, training flags) is kept as metadata.
_MODEL_KEYS = frozenset(
    {
        "model_type",
        "architectures",
        "n_embd",
        "hidden_size",
        "n_layer",
        "num_hidden_layers",
        "n_head",
        "num_attention_heads",
        "num_heads_kv",
        "n_inner",
        "intermediate_size",
        "vocab_size",
        "pad_vocab_size_multiple",
        "type_vocab_size",
        "layer_norm_epsilon",
        "layer_norm_eps",
        "activation_function",
        "hidden_act",
        "rotary_emb_base",
        "rope_theta",
        "rope_parameters",
        "rope_scaling",
        "rotary_emb_fraction",
        "rotary_emb_interleaved",
        "rotary_emb_scale_base",
        "rotary_scaling_factor",
        "max_trained_positions",
        "max_position_embeddings",
        "qkv_proj_bias",
        "mlp_fc1_bias",
        "mlp_fc2_bias",
        "prenorm",
        "causal",
        "parallel_block",
        "use_rms_norm",
        "num_experts",
        "moe_every_n_layers",
        "head_dim",
    }
)


def save_nomic_text(module: NomicBertText, directory: str | Path) -> Path:
    """Write `model.safetensors` (checkpoint key names) and `config.json` (both spellings where
    transformers can read it) into `directory`, each replaced atomically. An existing config.json
    keeps its metadata keys (e.g. `_name_or_path`); every key that describes the model is rewritten."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config: dict[str, Any] = {}
    if (directory / CONFIG_NAME).is_file():
        try:
            config = {k: v for k, v in read_config(directory).items() if k not in _MODEL_KEYS}
        except CheckpointError:
            config = {}  # unreadable: replaced whole
    config.update(module.config.to_hf_dict())
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in module.state_dict().items()}
    with atomic.replacing(directory / SAFETENSORS) as tmp:
        save_file(tensors, str(tmp), metadata={"format": "pt"})
    atomic.write_text(directory / CONFIG_NAME, json.dumps(config, indent=2) + "\n")
    return directory
