"""nomic-embed-text's config.json, read and written: `NomicTextConfig`, what the NomicBERT module
(models/nomic/text.py) is built from.

Two spellings exist: the legacy one of Nomic's remote code (GPT-2 style `n_embd`, `n_layer`, ...)
and the 2026 one of transformers' native class (`hidden_size`, `rope_parameters`, ...). Either is
read, or both, which must then agree; a configuration no published Nomic text model uses is
refused with an error naming the field, rather than built as some other model.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

MODEL_TYPE = "nomic_bert"
DEFAULT_ROPE_THETA = 1000.0

# Gated MLPs (fc11 = value, fc12 = gate): y = fc11(x) * act(fc12(x)); models/nomic/text.py maps
# each name to its act. "glu" is y * sigmoid(gate).
GATED_ACTIVATIONS = ("geglu", "glu", "swiglu")
# Plain MLPs (fc1, fc2). The reference maps every one of these names to the *exact* erf GELU
# (the tanh approximation it looks for is never reached for the block MLP), so we do too.
PLAIN_ACTIVATIONS = ("gelu", "gelu_new", "gelu_fast", "gelu_pytorch_tanh")
# The 2026 spelling (transformers' native class) is always gated; `hidden_act` names the gate's act.
_HIDDEN_ACT_TO_ACTIVATION = {"silu": "swiglu", "swish": "swiglu", "gelu": "geglu", "sigmoid": "glu"}
_ACTIVATION_TO_HIDDEN_ACT = {"swiglu": "silu", "geglu": "gelu", "glu": "sigmoid"}
_GATED_MULTIPLE_OF = 256  # the reference rounds gated MLP widths up to this


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
        if self.activation not in GATED_ACTIVATIONS and self.activation not in PLAIN_ACTIVATIONS:
            raise ValueError(
                f"activation_function={self.activation!r} is not supported; "
                f"expected one of {list(GATED_ACTIVATIONS + PLAIN_ACTIVATIONS)}"
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
        return self.activation in GATED_ACTIVATIONS

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
        gated = activation in GATED_ACTIVATIONS
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
    if legacy is not None and legacy not in GATED_ACTIVATIONS and legacy not in PLAIN_ACTIVATIONS:
        raise ValueError(
            f"config.json: activation_function={legacy!r} is not supported; "
            f"expected one of {list(GATED_ACTIVATIONS + PLAIN_ACTIVATIONS)}"
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
