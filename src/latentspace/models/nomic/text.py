"""NomicBERT (nomic-embed-text v1 / v1.5, nomic-bert-2048) as a plain PyTorch module.

Why our own module: Nomic publishes the model as Hugging Face "remote code", which needs
`trust_remote_code`, a hub download of a second repository and, under transformers 5, no longer
runs. transformers >= 5 has a native class, but it only reads the 2026 config spelling and
older transformers have none. This module reads either config spelling, loads the published
`model.safetensors` without a key map (the attribute tree *is* the checkpoint's key tree), and
refuses a mismatched checkpoint instead of leaving random weights behind.

The architecture, in one place:

    h = LayerNorm_emb(word_emb[ids] + token_type_emb[0])          # no learned position table
    per layer (post-LayerNorm):
        q, k, v = split(h @ Wqkv^T)                               # rows are [Q; K; V], head-major
        q, k = rope(q), rope(k)                                   # positions 0..L-1 of the padded batch
        h = norm1(h + out_proj(softmax(q k^T / sqrt(d) + mask) v))
        h = norm2(h + fc2(fc11(h) * act(fc12(h))))                # fc11 = value ("up"), fc12 = gate
    last_hidden_state = h

Rotary embedding: NeoX half-split by default (interleaved pairs optional), over the first
`rotary_emb_fraction` of each head, base `rope_theta` (1000 for Nomic, not the usual 10000).
With a `rotary_scaling_factor` s, *dynamic NTK* scaling applies when the padded length L exceeds
the trained length Lt: base' = base * (s*L/Lt - (s-1)) ** (d/(d-2)). The tables are computed from
(L, base, s, Lt) on every call, so the model is stateless: Nomic's reference caches the scaled
frequencies of the longest batch seen so far and applies them to every later batch, which changes
short texts' vectors after one long text. Stateless equals a freshly built reference on each batch.

Right padding is assumed (positions count from the first token of each row); left-padded
masks are refused. Everything except attention works token by token, so the linears and norms
run on the real tokens only (packed), and a batch of mixed lengths does not pay for its padding;
the output is zero at padding positions. There is no dropout anywhere: this is an inference module (the reference
even applies attention dropout at eval time when `attn_pdrop` > 0; we never do).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from latentspace import atomic
from latentspace.models.nomic.weights import CheckpointError, load_strict, read_state_dict

log = logging.getLogger(__name__)

MODEL_TYPE = "nomic_bert"
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
DEFAULT_ROPE_THETA = 1000.0

# Gated MLPs (fc11 = value, fc12 = gate): y = fc11(x) * act(fc12(x)). "glu" is y * sigmoid(gate).
_GATED: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "swiglu": F.silu,
    "geglu": F.gelu,
    "glu": torch.sigmoid,
}
# Plain MLPs (fc1, fc2). The reference maps every one of these names to the *exact* erf GELU
# (the tanh approximation it looks for is never reached for the block MLP), so we do too.
_PLAIN = ("gelu", "gelu_new", "gelu_fast", "gelu_pytorch_tanh")
# The 2026 spelling (transformers' native class) is always gated; `hidden_act` names the gate's act.
_HIDDEN_ACT_TO_ACTIVATION = {"silu": "swiglu", "swish": "swiglu", "gelu": "geglu", "sigmoid": "glu"}
_ACTIVATION_TO_HIDDEN_ACT = {"swiglu": "silu", "geglu": "gelu", "glu": "sigmoid"}
_GATED_MULTIPLE_OF = 256  # the reference rounds gated MLP widths up to this


# --------------------------------------------------------------------------------------------
# config
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class NomicTextConfig:
    """The shape and numerics of a NomicBERT text model (only what the forward pass needs).

    `inner` and `vocab_size` are the real tensor sizes (after the reference's rounding).
    `rotary_scaling_factor` None means no dynamic NTK scaling (the published config's null)."""

    hidden: int
    layers: int
    heads: int
    inner: int
    vocab_size: int
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    activation: str = "swiglu"
    rope_theta: float = DEFAULT_ROPE_THETA
    rotary_emb_fraction: float = 1.0
    rotary_emb_interleaved: bool = False
    rotary_scaling_factor: float | None = None
    max_trained_positions: int = 2048
    qkv_proj_bias: bool = False
    mlp_fc1_bias: bool = False
    mlp_fc2_bias: bool = False

    def __post_init__(self) -> None:
        for name in ("hidden", "layers", "heads", "inner", "vocab_size"):
            if int(getattr(self, name)) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)!r}")
        if self.hidden % self.heads:
            raise ValueError(f"hidden size {self.hidden} is not divisible by the number of heads {self.heads}")
        if self.activation not in _GATED and self.activation not in _PLAIN:
            raise ValueError(
                f"activation_function={self.activation!r} is not supported; "
                f"expected one of {sorted(_GATED) + list(_PLAIN)}"
            )
        if not 0.0 < self.rotary_emb_fraction <= 1.0:
            raise ValueError(
                f"rotary_emb_fraction={self.rotary_emb_fraction!r} is not supported: it must be in "
                "(0, 1] (0 means a learned position table, which no Nomic checkpoint uses)"
            )
        rd = self.head_dim * self.rotary_emb_fraction
        if rd != int(rd) or int(rd) % 2:
            raise ValueError(
                f"rotary_emb_fraction={self.rotary_emb_fraction!r} gives a rotary width of {rd} "
                f"for head size {self.head_dim}; it must be an even whole number"
            )
        if self.rotary_scaling_factor is not None and not self.rotary_scaling_factor > 0:
            raise ValueError(f"rotary_scaling_factor must be positive or None, got {self.rotary_scaling_factor!r}")
        if self.rotary_scaling_factor is not None and int(rd) <= 2:
            raise ValueError(f"dynamic NTK scaling needs a rotary width above 2 (d/(d-2)), got {int(rd)}")
        if self.max_trained_positions <= 0:
            raise ValueError(f"max_trained_positions must be positive, got {self.max_trained_positions!r}")
        if self.type_vocab_size < 0:
            raise ValueError(f"type_vocab_size must be >= 0, got {self.type_vocab_size!r}")

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    @property
    def rotary_dim(self) -> int:
        return int(self.head_dim * self.rotary_emb_fraction)

    @property
    def gated(self) -> bool:
        return self.activation in _GATED

    # -- reading ----------------------------------------------------------------------------
    @classmethod
    def from_hf_dict(cls, d: Mapping[str, Any], state_keys: set[str] | None = None) -> NomicTextConfig:
        """Read a `config.json` dict in the legacy (GPT-2 style, Nomic's remote code) spelling,
        the 2026 spelling (transformers' native class), or both. Where both give a value they
        must agree. `state_keys` (the checkpoint's normalised key names) settles the bias flags
        when the legacy keys are absent: the reference's class defaults are True, the published
        checkpoints have none, so the tensors are the only trustworthy witness."""
        _refuse_unsupported(d)
        new_style = any(k in d for k in ("hidden_size", "num_hidden_layers", "num_attention_heads"))

        hidden = _pick(d, "n_embd", "hidden_size", int)
        layers = _pick(d, "n_layer", "num_hidden_layers", int)
        heads = _pick(d, "n_head", "num_attention_heads", int)
        if _present(d, "head_dim") and heads and int(d["head_dim"]) * heads != hidden:
            raise ValueError(
                f"config.json: head_dim={d['head_dim']!r} is not supported: it must be "
                f"hidden size / heads = {hidden / heads:g}"
            )
        if "vocab_size" not in d or d["vocab_size"] is None:
            raise ValueError("config.json has no vocab_size")
        vocab = int(d["vocab_size"])
        multiple = int(d.get("pad_vocab_size_multiple") or 1)
        vocab = -(-vocab // multiple) * multiple  # the reference pads the table up to the multiple

        activation = _read_activation(d)
        gated = activation in _GATED
        legacy_inner = _int_or_none(d.get("n_inner"))
        new_inner = _int_or_none(d.get("intermediate_size"))
        if legacy_inner is not None and new_inner is not None and legacy_inner != new_inner:
            raise ValueError(
                f"config.json disagrees with itself: n_inner={d['n_inner']!r} "
                f"but intermediate_size={d['intermediate_size']!r}"
            )
        if legacy_inner is not None or new_inner is None:
            # The reference's width: default 8h/3 (gated) or 4h, gated widths rounded up to 256.
            inner = legacy_inner if legacy_inner is not None else (int(8 * hidden / 3) if gated else 4 * hidden)
            if gated:
                inner = -(-inner // _GATED_MULTIPLE_OF) * _GATED_MULTIPLE_OF
        else:
            inner = new_inner  # transformers' native class uses intermediate_size as is

        eps = _pick(d, "layer_norm_epsilon", "layer_norm_eps", float, default=1e-12 if new_style else 1e-5)
        theta, scaling = _read_rope(d)
        scaling_on = scaling is not None
        max_trained = _pick(
            d, "max_trained_positions", "max_position_embeddings", int, default=2048, must_agree=scaling_on
        )

        return cls(
            hidden=hidden,
            layers=layers,
            heads=heads,
            inner=inner,
            vocab_size=vocab,
            type_vocab_size=int(d["type_vocab_size"]) if _present(d, "type_vocab_size") else 2,
            layer_norm_eps=eps,
            activation=activation,
            rope_theta=theta,
            rotary_emb_fraction=float(d["rotary_emb_fraction"]) if _present(d, "rotary_emb_fraction") else 1.0,
            rotary_emb_interleaved=bool(d.get("rotary_emb_interleaved") or False),
            rotary_scaling_factor=scaling,
            max_trained_positions=max_trained,
            qkv_proj_bias=_read_bias(
                d, "qkv_proj_bias", state_keys, ("attn.Wqkv.bias", "attn.out_proj.bias"), new_style
            ),
            mlp_fc1_bias=_read_bias(
                d, "mlp_fc1_bias", state_keys, ("mlp.fc11.bias", "mlp.fc12.bias", "mlp.fc1.bias"), new_style
            ),
            mlp_fc2_bias=_read_bias(d, "mlp_fc2_bias", state_keys, ("mlp.fc2.bias",), new_style),
        )

    # -- writing ----------------------------------------------------------------------------
    def to_hf_dict(self) -> dict[str, Any]:
        """A `config.json` that Nomic's remote code and this module read (legacy keys), plus the
        2026 keys transformers' native class reads -- but only when that class can represent this
        model exactly (gated MLP, no biases, full-width NeoX RoPE); otherwise those keys would
        describe a different model, so they are left out."""
        d: dict[str, Any] = {
            "model_type": MODEL_TYPE,
            "architectures": ["NomicBertModel"],
            "n_embd": self.hidden,
            "n_layer": self.layers,
            "n_head": self.heads,
            "n_inner": self.inner,
            "vocab_size": self.vocab_size,
            "type_vocab_size": self.type_vocab_size,
            "layer_norm_epsilon": self.layer_norm_eps,
            "activation_function": self.activation,
            "rotary_emb_base": self.rope_theta,
            "rotary_emb_fraction": self.rotary_emb_fraction,
            "rotary_emb_interleaved": self.rotary_emb_interleaved,
            "rotary_emb_scale_base": None,
            "rotary_scaling_factor": self.rotary_scaling_factor,
            "max_trained_positions": self.max_trained_positions,
            "qkv_proj_bias": self.qkv_proj_bias,
            "mlp_fc1_bias": self.mlp_fc1_bias,
            "mlp_fc2_bias": self.mlp_fc2_bias,
            "prenorm": False,
            "causal": False,
        }
        native_ok = (
            self.gated
            and not (self.qkv_proj_bias or self.mlp_fc1_bias or self.mlp_fc2_bias)
            and self.rotary_emb_fraction == 1.0
            and not self.rotary_emb_interleaved
        )
        if native_ok:
            rope: dict[str, Any] = {"rope_theta": self.rope_theta, "rope_type": "default"}
            if self.rotary_scaling_factor is not None:
                rope = {"rope_theta": self.rope_theta, "rope_type": "dynamic", "factor": self.rotary_scaling_factor}
            d.update(
                {
                    "hidden_size": self.hidden,
                    "num_hidden_layers": self.layers,
                    "num_attention_heads": self.heads,
                    "intermediate_size": self.inner,
                    "hidden_act": _ACTIVATION_TO_HIDDEN_ACT[self.activation],
                    "layer_norm_eps": self.layer_norm_eps,
                    "max_position_embeddings": self.max_trained_positions,
                    "rope_parameters": rope,
                }
            )
        return d


def _present(d: Mapping[str, Any], key: str) -> bool:
    return d.get(key) is not None


def _int_or_none(x: Any) -> int | None:
    return None if x is None else int(float(x))  # "n_inner": 3072.0 appears in published configs


_REQUIRED = object()


def _pick(
    d: Mapping[str, Any],
    legacy: str,
    new: str,
    cast: Callable[[Any], Any],
    *,
    default: Any = _REQUIRED,
    must_agree: bool = True,
) -> Any:
    """One value from either spelling; both present must agree (else the file is ambiguous)."""
    lv = cast(d[legacy]) if _present(d, legacy) else None
    nv = cast(d[new]) if _present(d, new) else None
    if lv is not None and nv is not None and lv != nv and must_agree:
        raise ValueError(f"config.json disagrees with itself: {legacy}={d[legacy]!r} but {new}={d[new]!r}")
    if lv is not None:
        return lv
    if nv is not None:
        return nv
    if default is _REQUIRED:
        raise ValueError(f"config.json has neither {legacy} nor {new}")
    return default


def _refuse_unsupported(d: Mapping[str, Any]) -> None:
    """Configurations the reference supports but no published Nomic text checkpoint uses.
    Each error names the field, so a user knows exactly why their checkpoint is refused."""
    model_type = d.get("model_type")
    if model_type is not None and model_type != MODEL_TYPE:
        raise ValueError(f"model_type={model_type!r} is not a NomicBERT text model (expected {MODEL_TYPE!r})")
    flags = {
        "prenorm": "pre-LayerNorm blocks (Nomic's text models are post-LayerNorm)",
        "parallel_block": "parallel attention/MLP blocks",
        "use_rms_norm": "RMSNorm",
        "causal": "causal (decoder) attention",
    }
    for key, what in flags.items():
        if d.get(key):
            raise ValueError(f"config.json: {key}={d[key]!r} ({what}) is not supported")
    if d.get("rotary_emb_scale_base") is not None:
        raise ValueError(f"config.json: rotary_emb_scale_base={d['rotary_emb_scale_base']!r} (xPos) is not supported")
    for key in ("num_experts", "moe_every_n_layers"):
        if (d.get(key) or 0) > 0:
            raise ValueError(
                f"config.json: {key}={d[key]!r} is a mixture-of-experts model "
                "(nomic-embed-text v2-moe), which is not supported"
            )
    heads_kv = d.get("num_heads_kv")
    heads = d.get("n_head", d.get("num_attention_heads"))
    if heads_kv is not None and heads_kv != heads:
        raise ValueError(f"config.json: num_heads_kv={heads_kv!r} (grouped-query attention) is not supported")
    if d.get("rotary_emb_fraction") is not None and float(d["rotary_emb_fraction"]) <= 0:
        raise ValueError(
            f"config.json: rotary_emb_fraction={d['rotary_emb_fraction']!r} (a learned position "
            "table instead of rotary embeddings) is not supported"
        )


def _read_activation(d: Mapping[str, Any]) -> str:
    legacy = d.get("activation_function")
    if legacy is not None and legacy not in _GATED and legacy not in _PLAIN:
        raise ValueError(
            f"config.json: activation_function={legacy!r} is not supported; "
            f"expected one of {sorted(_GATED) + list(_PLAIN)}"
        )
    new = None
    if d.get("hidden_act") is not None:
        if d["hidden_act"] not in _HIDDEN_ACT_TO_ACTIVATION:
            raise ValueError(
                f"config.json: hidden_act={d['hidden_act']!r} is not supported; "
                f"expected one of {sorted(_HIDDEN_ACT_TO_ACTIVATION)}"
            )
        new = _HIDDEN_ACT_TO_ACTIVATION[d["hidden_act"]]
    if legacy is not None and new is not None and legacy != new:
        raise ValueError(
            f"config.json disagrees with itself: activation_function={legacy!r} "
            f"but hidden_act={d['hidden_act']!r} (a gated {new})"
        )
    return legacy or new or "swiglu"


def _read_rope(d: Mapping[str, Any]) -> tuple[float, float | None]:
    """(base, dynamic-NTK factor or None) from `rotary_emb_base` / `rotary_scaling_factor` or
    `rope_parameters` (also the transformers-4 spelling `rope_theta` + `rope_scaling`)."""
    params = d.get("rope_parameters") or d.get("rope_scaling") or {}
    if not isinstance(params, Mapping):
        raise ValueError(f"config.json: rope_parameters={params!r} is not an object")
    rope_type = params.get("rope_type", params.get("type", "default"))
    if rope_type not in ("default", "dynamic"):
        raise ValueError(
            f"config.json: rope_parameters.rope_type={rope_type!r} is not supported (expected 'default' or 'dynamic')"
        )
    new_theta = params.get("rope_theta", d.get("rope_theta"))
    legacy_theta = d.get("rotary_emb_base")
    if legacy_theta is not None and new_theta is not None and float(legacy_theta) != float(new_theta):
        raise ValueError(
            f"config.json disagrees with itself: rotary_emb_base={legacy_theta!r} "
            f"but rope_parameters.rope_theta={new_theta!r}"
        )
    theta = legacy_theta if legacy_theta is not None else new_theta
    if theta is None:
        log.warning(
            "config.json gives no rotary base (rotary_emb_base / rope_parameters.rope_theta); "
            "using %s, the NomicBERT default",
            DEFAULT_ROPE_THETA,
        )
        theta = DEFAULT_ROPE_THETA

    new_factor = None
    if rope_type == "dynamic":
        if params.get("factor") is None:
            raise ValueError("config.json: rope_parameters.rope_type='dynamic' needs rope_parameters.factor")
        new_factor = float(params["factor"])
    # The reference tests the legacy factor for truth: null and 0 both mean "no scaling".
    legacy_factor = float(d["rotary_scaling_factor"]) if d.get("rotary_scaling_factor") else None
    if legacy_factor is not None and new_factor is not None and legacy_factor != new_factor:
        raise ValueError(
            f"config.json disagrees with itself: rotary_scaling_factor={legacy_factor!r} "
            f"but rope_parameters.factor={new_factor!r}"
        )
    return float(theta), legacy_factor if legacy_factor is not None else new_factor


def _read_bias(
    d: Mapping[str, Any], key: str, state_keys: set[str] | None, suffixes: tuple[str, ...], new_style: bool
) -> bool:
    if d.get(key) is not None:
        return bool(d[key])
    if state_keys is not None:
        return any(k.endswith(suffixes) for k in state_keys)
    if not new_style:
        log.warning(
            "config.json has no %s and no checkpoint keys were given to infer it from; "
            "assuming no bias (as in the published Nomic checkpoints)",
            key,
        )
    return False  # transformers' native class never has biases


# --------------------------------------------------------------------------------------------
# rotary embedding
# --------------------------------------------------------------------------------------------


def rotary_cos_sin(
    seq_len: int,
    rotary_dim: int,
    base: float,
    *,
    scaling_factor: float | None = None,
    max_trained: int = 2048,
    device: torch.device | str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin tables, each (seq_len, rotary_dim // 2), in fp32, for positions 0..seq_len-1.

    With `scaling_factor` s and seq_len > max_trained, the base is stretched by dynamic NTK:
    base * (s*L/Lt - (s-1)) ** (d/(d-2)) (the same arithmetic, in Python floats, as the
    references, so the tables agree bit for bit). Pure: nothing is cached between calls."""
    if scaling_factor is not None and seq_len > max_trained:
        s = scaling_factor
        base = base * ((s * seq_len / max_trained) - (s - 1)) ** (rotary_dim / (rotary_dim - 2))
    inv_freq = 1.0 / (base ** (torch.arange(0, rotary_dim, 2, device=device, dtype=torch.float32) / rotary_dim))
    freqs = torch.outer(torch.arange(seq_len, device=device, dtype=torch.float32), inv_freq)
    return freqs.cos(), freqs.sin()


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, *, interleaved: bool = False) -> torch.Tensor:
    """Rotate the first 2*cos.shape[-1] features of x's last dim; the rest pass through.

    `cos`/`sin` must broadcast against x[..., :half] (e.g. (L, 1, 1, half) for x of shape
    (B, L, 2, heads, head_dim)). NeoX style pairs feature i with i + half; interleaved (GPT-J
    style) pairs 2i with 2i+1. Either way (a, b) -> (a cos - b sin, b cos + a sin)."""
    half = cos.shape[-1]
    rot, rest = x[..., : 2 * half], x[..., 2 * half :]
    if interleaved:
        a, b = rot[..., 0::2], rot[..., 1::2]
        out = torch.stack((a * cos - b * sin, b * cos + a * sin), dim=-1).flatten(-2)
    else:
        a, b = rot[..., :half], rot[..., half:]
        out = torch.cat((a * cos - b * sin, b * cos + a * sin), dim=-1)
    return out if rest.shape[-1] == 0 else torch.cat((out, rest), dim=-1)


# --------------------------------------------------------------------------------------------
# the module (attribute names = checkpoint key names)
# --------------------------------------------------------------------------------------------


class NomicBertEmbeddings(nn.Module):
    def __init__(self, config: NomicTextConfig) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden)
        # type_vocab_size 0 means no token-type table (the reference allows it); Nomic's has 2 rows.
        self.token_type_embeddings = (
            nn.Embedding(config.type_vocab_size, config.hidden) if config.type_vocab_size > 0 else None
        )

    def forward(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor | None) -> torch.Tensor:
        h = self.word_embeddings(input_ids)
        if self.token_type_embeddings is not None:
            if token_type_ids is None:  # the usual case: every token is type 0, so add row 0 once
                h = h + self.token_type_embeddings.weight[0]
            else:
                h = h + self.token_type_embeddings(token_type_ids)
        return h


class NomicBertAttention(nn.Module):
    def __init__(self, config: NomicTextConfig) -> None:
        super().__init__()
        self.heads, self.head_dim = config.heads, config.head_dim
        self.interleaved = config.rotary_emb_interleaved
        # One fused projection; its output rows are [Q (heads x head_dim); K; V].
        self.Wqkv = nn.Linear(config.hidden, 3 * config.hidden, bias=config.qkv_proj_bias)
        self.out_proj = nn.Linear(config.hidden, config.hidden, bias=config.qkv_proj_bias)

    def forward(self, x: torch.Tensor, batch: _Batch) -> torch.Tensor:
        """x: (tokens, hidden) rows of real tokens; only attention needs the (B, L) layout."""
        b, n = batch.shape
        qkv = batch.pad(self.Wqkv(x)).view(b, n, 3, self.heads, self.head_dim)
        # Rotate q and k in one pass over the (B, L, 2, heads, head_dim) view; v stays a view.
        qk = apply_rotary(qkv[:, :, :2], batch.cos, batch.sin, interleaved=self.interleaved)
        q, k = qk.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, heads, L, head_dim), no copy
        v = qkv[:, :, 2].transpose(1, 2)
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=batch.mask)  # scale 1/sqrt(head_dim), no dropout
        return self.out_proj(batch.pack(a.transpose(1, 2)))


class NomicBertGatedMLP(nn.Module):
    def __init__(self, config: NomicTextConfig) -> None:
        super().__init__()
        self.fc11 = nn.Linear(config.hidden, config.inner, bias=config.mlp_fc1_bias)  # value ("up")
        self.fc12 = nn.Linear(config.hidden, config.inner, bias=config.mlp_fc1_bias)  # gate
        self.fc2 = nn.Linear(config.inner, config.hidden, bias=config.mlp_fc2_bias)
        self.act = _GATED[config.activation]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.fc11(x) * self.act(self.fc12(x)))


class NomicBertMLP(nn.Module):
    def __init__(self, config: NomicTextConfig) -> None:
        super().__init__()
        self.fc1 = nn.Linear(config.hidden, config.inner, bias=config.mlp_fc1_bias)
        self.fc2 = nn.Linear(config.inner, config.hidden, bias=config.mlp_fc2_bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class NomicBertBlock(nn.Module):
    """Post-LayerNorm: residual add first, then normalise (BERT's order)."""

    def __init__(self, config: NomicTextConfig) -> None:
        super().__init__()
        self.attn = NomicBertAttention(config)
        self.mlp: nn.Module = NomicBertGatedMLP(config) if config.gated else NomicBertMLP(config)
        self.norm1 = nn.LayerNorm(config.hidden, eps=config.layer_norm_eps)
        self.norm2 = nn.LayerNorm(config.hidden, eps=config.layer_norm_eps)

    def forward(self, x: torch.Tensor, batch: _Batch) -> torch.Tensor:
        x = self.norm1(x + self.attn(x, batch))
        return self.norm2(x + self.mlp(x))


class NomicBertEncoder(nn.Module):
    def __init__(self, config: NomicTextConfig) -> None:
        super().__init__()
        self.layers = nn.ModuleList(NomicBertBlock(config) for _ in range(config.layers))


class NomicBertText(nn.Module):
    """NomicBERT's encoder: `forward(input_ids, attention_mask) -> last_hidden_state` (B, L, hidden).

    `state_dict()` keys are exactly the published checkpoint's (`embeddings.word_embeddings.weight`,
    `emb_ln.*`, `encoder.layers.N.attn.Wqkv.weight`, ...). `rotary_scaling_factor` overrides the
    config's (None keeps it); see the module docstring for the dynamic NTK semantics."""

    def __init__(self, config: NomicTextConfig, *, rotary_scaling_factor: float | None = None) -> None:
        super().__init__()
        if rotary_scaling_factor is not None:
            config = dataclasses.replace(config, rotary_scaling_factor=float(rotary_scaling_factor))
        self.config = config
        self.embeddings = NomicBertEmbeddings(config)
        self.emb_ln = nn.LayerNorm(config.hidden, eps=config.layer_norm_eps)
        self.encoder = NomicBertEncoder(config)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """input_ids, attention_mask (1 = token, 0 = padding), token_type_ids: (B, L), right-padded.
        Returns the last hidden state (B, L, hidden), zero at padding positions."""
        cfg = self.config
        dtype = self.emb_ln.weight.dtype
        cos, sin = rotary_cos_sin(
            input_ids.shape[1],
            cfg.rotary_dim,
            cfg.rope_theta,
            scaling_factor=cfg.rotary_scaling_factor,
            max_trained=cfg.max_trained_positions,
            device=input_ids.device,
        )
        # Computed in fp32, then cast, as the reference does; shaped to broadcast over
        # (B, L, q/k, heads, rotary_dim/2).
        batch = _Batch(
            input_ids.shape, attention_mask, dtype, cos.to(dtype)[:, None, None, :], sin.to(dtype)[:, None, None, :]
        )

        # Everything but attention works token by token, so it runs on the real tokens only
        # (packed rows): a batch of mixed lengths does not pay for its padding in the linears.
        ids = batch.pack(input_ids[..., None])[:, 0]
        types = None if token_type_ids is None else batch.pack(token_type_ids[..., None])[:, 0]
        x = self.emb_ln(self.embeddings(ids, types))
        for layer in self.encoder.layers:
            x = layer(x, batch)
        return batch.pad(x)


class _Batch:
    """What every layer needs to know about one right-padded (B, L) batch: which rows of the
    flattened batch are real tokens, the additive attention mask, and the rotary tables.

    `pack` takes (B, L, C) to (tokens, C), the real tokens only; `pad` puts (tokens, C) back
    into (B, L, C) with zeros at padding. Without padding both are free reshapes."""

    def __init__(
        self,
        shape: torch.Size,
        attention_mask: torch.Tensor | None,
        dtype: torch.dtype,
        cos: torch.Tensor,
        sin: torch.Tensor,
    ) -> None:
        self.shape = (int(shape[0]), int(shape[1]))
        self.cos, self.sin = cos, sin
        self.mask: torch.Tensor | None = None
        self.index: torch.Tensor | None = None  # None: every position is a real token
        if attention_mask is None:
            return
        keep = attention_mask.bool()
        tracing = torch.jit.is_tracing() or torch.compiler.is_compiling()
        if not tracing:
            # Positions count from each row's first token, so padding must be on the right.
            if keep.shape[1] > 1 and bool((keep[:, 1:] & ~keep[:, :-1]).any()):
                raise ValueError(
                    "attention_mask has a token after padding: NomicBERT needs right padding "
                    "(its rotary positions count from the first column)"
                )
            if bool(keep.all()):
                return
            self.index = keep.flatten().nonzero()[:, 0]
        # Additive (the reference's finfo.min) rather than boolean: a row with no token at all
        # then stays finite (uniform attention) instead of NaN.
        mask = torch.zeros(keep.shape, dtype=dtype, device=keep.device).masked_fill(~keep, torch.finfo(dtype).min)
        self.mask = mask[:, None, None, :]

    def pack(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(self.shape[0] * self.shape[1], -1)
        return flat if self.index is None else flat.index_select(0, self.index)

    def pad(self, x: torch.Tensor) -> torch.Tensor:
        b, n = self.shape
        if self.index is not None:
            # Zeros, not empty memory: padded keys are masked, but a NaN there would still poison a row.
            x = x.new_zeros(b * n, x.shape[-1]).index_copy_(0, self.index, x)
        return x.view(b, n, x.shape[-1])


# --------------------------------------------------------------------------------------------
# directories
# --------------------------------------------------------------------------------------------


def _read_config(directory: Path) -> dict[str, Any]:
    path = directory / CONFIG_NAME
    try:
        d = json.loads(path.read_text())
    except FileNotFoundError as e:
        raise CheckpointError(f"{directory} has no {CONFIG_NAME}") from e
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path} is not valid JSON: {e}") from e
    if not isinstance(d, dict):
        raise CheckpointError(f"{path} holds a {type(d).__name__}, not an object")
    return d


def is_nomic_text_dir(path: str | Path) -> bool:
    """True for a directory whose config.json describes a NomicBERT *text* model.

    Nomic's vision model shares `model_type: nomic_bert` (and the remote-code file), so vision is
    recognised by `architectures` / `auto_map` naming NomicVisionModel, never by model_type."""
    try:
        d = _read_config(Path(path))
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
    raw = _read_config(directory)
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
            config = {k: v for k, v in _read_config(directory).items() if k not in _MODEL_KEYS}
        except CheckpointError:
            config = {}  # unreadable: replaced whole
    config.update(module.config.to_hf_dict())
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in module.state_dict().items()}
    with atomic.replacing(directory / WEIGHTS_NAME) as tmp:
        save_file(tensors, str(tmp), metadata={"format": "pt"})
    atomic.write_text(directory / CONFIG_NAME, json.dumps(config, indent=2) + "\n")
    return directory
