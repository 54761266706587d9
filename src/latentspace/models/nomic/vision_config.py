"""nomic-embed-vision's config.json, read and written: `NomicVisionConfig`, what the vision module
(models/nomic/vision.py) is built from.

Only the fields that decide the network are kept; absent ones take the reference code's defaults,
and a combination no published checkpoint uses is refused with an error naming the field.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

ARCHITECTURE = "NomicVisionModel"
# The `auto_map` the published config carries (the code lives in a second hub repository).
PUBLISHED_AUTO_MAP = {
    "AutoConfig": "nomic-ai/nomic-bert-2048--configuration_hf_nomic_bert.NomicBertConfig",
    "AutoModel": "nomic-ai/nomic-bert-2048--modeling_hf_nomic_bert.NomicVisionModel",
}
MLP_MULTIPLE_OF = 256  # gated-MLP widths are rounded up to this, as the reference does


def _round_up(value: int, multiple: int) -> int:
    return (value + multiple - 1) // multiple * multiple


def _size_pair(value: Any, name: str) -> tuple[int, int]:
    if isinstance(value, (list, tuple)) and len(value) == 2:
        return int(value[0]), int(value[1])
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return int(value), int(value)
    raise ValueError(f"vision config field {name!r} must be an int or a pair of ints, got {value!r}")


@dataclass(frozen=True)
class NomicVisionConfig:
    """The fields of a Nomic vision `config.json` that decide the network.

    Absent fields take the reference code's defaults (which are not always the published values:
    e.g. `prenorm` defaults to false there, and is then refused here). Combinations that no
    published checkpoint uses, and that this module does not implement, are refused with a
    ValueError naming the field rather than silently built differently.
    """

    img_size: tuple[int, int]
    patch_size: int
    n_embd: int
    n_head: int
    n_layer: int
    n_inner: int | None = None  # None -> int(8 * n_embd / 3); see `mlp_hidden` for the width used
    num_channels: int = 3
    layer_norm_epsilon: float = 1e-5  # GPT2Config's default; the published file says 1e-6
    norm_mlp: bool = False
    qkv_proj_bias: bool = True
    mlp_fc1_bias: bool = True
    mlp_fc2_bias: bool = True
    patch_embed_bias: bool = True
    use_rotary_pos_emb: bool = False
    ref_feat_shape: tuple[int, int] | None = None
    use_pos_embed: bool = True
    learned_pos_embedding: bool = False
    no_cls_token: bool = False
    register_tokens: int = 0
    no_embed_class: bool = False
    global_pool: str | None = None
    prenorm: bool = False
    mask_token: bool = False
    sinusoidal_pos_embedding: bool = False
    activation_function: str = "swiglu"

    def __post_init__(self) -> None:
        # Accept the JSON spellings (an int size, list pairs) when constructed directly, too.
        object.__setattr__(self, "img_size", _size_pair(self.img_size, "img_size"))
        if self.ref_feat_shape is not None:
            object.__setattr__(self, "ref_feat_shape", _size_pair(self.ref_feat_shape, "ref_feat_shape"))
        refusals = {
            "register_tokens": (self.register_tokens > 0, "register tokens are not implemented"),
            "no_cls_token": (self.no_cls_token, "the embedding is the CLS token, so a CLS token is required"),
            "learned_pos_embedding": (
                self.learned_pos_embedding,
                "the DINO-style interpolated position table is not implemented",
            ),
            "sinusoidal_pos_embedding": (
                self.sinusoidal_pos_embedding,
                "fixed sin-cos position tables are not implemented",
            ),
            "global_pool": (
                self.global_pool is not None,
                f"only null (no pooling before the selector) is implemented, got {self.global_pool!r}",
            ),
            "prenorm": (not self.prenorm, "only pre-LayerNorm blocks (prenorm: true) are implemented"),
            "mask_token": (self.mask_token, "a mask token (a training-only parameter) is not implemented"),
            "no_embed_class": (self.no_embed_class, "position tables that skip the CLS token are not implemented"),
            "activation_function": (
                self.activation_function != "swiglu",
                f"only 'swiglu' is implemented, got {self.activation_function!r}",
            ),
        }
        for field_name, (refused, why) in refusals.items():
            if refused:
                raise ValueError(f"unsupported Nomic vision config: {field_name}: {why}")
        for name in ("patch_size", "n_embd", "n_head", "n_layer", "num_channels"):
            if int(getattr(self, name)) <= 0:
                raise ValueError(f"vision config field {name!r} must be positive, got {getattr(self, name)}")
        if self.n_embd % self.n_head:
            raise ValueError(f"vision config: n_embd {self.n_embd} is not divisible by n_head {self.n_head}")
        if self.use_rotary_pos_emb and self.head_dim % 4:
            raise ValueError(
                f"vision config: the 2-D rotary embedding needs a head size divisible by 4, "
                f"got {self.head_dim} (n_embd / n_head)"
            )
        if self.img_size[0] % self.patch_size or self.img_size[1] % self.patch_size:
            raise ValueError(
                f"vision config: img_size {self.img_size} is not a multiple of patch_size {self.patch_size}"
            )

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def grid(self) -> tuple[int, int]:
        """Patches per column and per row."""
        return self.img_size[0] // self.patch_size, self.img_size[1] // self.patch_size

    @property
    def num_tokens(self) -> int:
        """CLS + patches: 197 for the published 224 px / 16 px model."""
        return self.grid[0] * self.grid[1] + 1

    @property
    def mlp_hidden(self) -> int:
        """The SwiGLU width actually built (blocks and selector): `n_inner`, or 8/3 of the width when
        absent, rounded up to a multiple of 256 as the reference does."""
        base = self.n_inner if self.n_inner is not None else int(8 * self.n_embd / 3)
        return _round_up(base, MLP_MULTIPLE_OF)

    @classmethod
    def from_hf_dict(cls, d: Mapping[str, Any]) -> NomicVisionConfig:
        """From a parsed `config.json`. `n_inner` is read as int(float(x)): the published file has
        2048.0, which is also why transformers 5 refuses it."""
        missing = [k for k in ("img_size", "patch_size", "n_embd", "n_head", "n_layer") if d.get(k) is None]
        if missing:
            raise ValueError(f"vision config is missing required field(s): {', '.join(missing)}")
        if float(d.get("rotary_emb_fraction") or 0) > 0:
            raise ValueError(
                "unsupported Nomic vision config: rotary_emb_fraction: the 1-D text rotary embedding "
                "is not implemented for images (the published value is 0)"
            )
        for flag in ("parallel_block", "use_rms_norm", "layer_scale", "causal"):
            if d.get(flag):
                raise ValueError(f"unsupported Nomic vision config: {flag}: only false is implemented")
        n_inner = d.get("n_inner")
        ref = d.get("ref_feat_shape")
        return cls(
            img_size=_size_pair(d["img_size"], "img_size"),
            patch_size=int(d["patch_size"]),
            n_embd=int(d["n_embd"]),
            n_head=int(d["n_head"]),
            n_layer=int(d["n_layer"]),
            n_inner=None if n_inner is None else int(float(n_inner)),
            num_channels=int(d.get("num_channels", 3)),
            layer_norm_epsilon=float(d.get("layer_norm_epsilon", 1e-5)),
            norm_mlp=bool(d.get("norm_mlp", False)),
            qkv_proj_bias=bool(d.get("qkv_proj_bias", True)),
            mlp_fc1_bias=bool(d.get("mlp_fc1_bias", True)),
            mlp_fc2_bias=bool(d.get("mlp_fc2_bias", True)),
            patch_embed_bias=bool(d.get("patch_embed_bias", True)),
            use_rotary_pos_emb=bool(d.get("use_rotary_pos_emb", False)),
            ref_feat_shape=None if ref is None else _size_pair(ref, "ref_feat_shape"),
            use_pos_embed=bool(d.get("use_pos_embed", True)),
            learned_pos_embedding=bool(d.get("learned_pos_embedding", False)),
            no_cls_token=bool(d.get("no_cls_token", False)),
            register_tokens=int(d.get("register_tokens") or 0),
            no_embed_class=bool(d.get("no_embed_class", False)),
            global_pool=d.get("global_pool"),
            prenorm=bool(d.get("prenorm", False)),
            mask_token=bool(d.get("mask_token", False)),
            sinusoidal_pos_embedding=bool(d.get("sinusoidal_pos_embedding", False)),
            activation_function=str(d.get("activation_function", "swiglu")),
        )

    def to_hf_dict(self) -> dict[str, Any]:
        """The published `config.json` layout (legacy GPT-2-style names, `n_inner` as a float like
        the published file), readable back by `from_hf_dict`."""
        h, w = self.img_size
        return {
            "activation_function": self.activation_function,
            "architectures": [ARCHITECTURE],
            "attn_pdrop": 0.0,
            "auto_map": dict(PUBLISHED_AUTO_MAP),
            "embd_pdrop": 0.0,
            "global_pool": self.global_pool,
            "img_size": h if h == w else [h, w],
            "layer_norm_epsilon": self.layer_norm_epsilon,
            "learned_pos_embedding": self.learned_pos_embedding,
            "mask_token": self.mask_token,
            "mlp_fc1_bias": self.mlp_fc1_bias,
            "mlp_fc2_bias": self.mlp_fc2_bias,
            "model_type": "nomic_bert",
            "n_embd": self.n_embd,
            "n_head": self.n_head,
            "n_inner": None if self.n_inner is None else float(self.n_inner),
            "n_layer": self.n_layer,
            "no_cls_token": self.no_cls_token,
            "no_embed_class": self.no_embed_class,
            "no_last_ln": True,
            "norm_mlp": self.norm_mlp,
            "num_channels": self.num_channels,
            "patch_embed_bias": self.patch_embed_bias,
            "patch_size": self.patch_size,
            "prenorm": self.prenorm,
            "qkv_proj_bias": self.qkv_proj_bias,
            "ref_feat_shape": None if self.ref_feat_shape is None else list(self.ref_feat_shape),
            "register_tokens": self.register_tokens,
            "resid_pdrop": 0.0,
            "rotary_emb_base": 10000,
            "rotary_emb_fraction": 0,
            "sinusoidal_pos_embedding": self.sinusoidal_pos_embedding,
            "torch_dtype": "float32",
            "use_pos_embed": self.use_pos_embed,
            "use_rotary_pos_emb": self.use_rotary_pos_emb,
        }
