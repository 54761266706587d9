"""Nomic Embed Vision (v1 / v1.5) as a plain PyTorch module: no remote code, no einops, no hub.

The published checkpoint (`architectures: ["NomicVisionModel"]`) is an EVA02-B/16 trunk followed by
an attention-pooling "selector":

* Trunk: a linear patch embedding (in-features ordered channel, row, column), a CLS token and a
  learned absolute position table over CLS + patches, then pre-LN blocks whose attention applies
  EVA's 2-D rotary embedding to the patch tokens (never to CLS) and whose SwiGLU MLP has a
  LayerNorm on its hidden layer. There is no final LayerNorm.
* Selector: one learned latent query attends over all tokens; its output goes through a LayerNorm
  and a SwiGLU MLP and is then *added to every token* (a broadcast, as Nomic trained it). The image
  embedding is the L2-normalised token 0 of that sum.

The attribute tree mirrors the checkpoint's keys, so a published `model.safetensors` loads strictly
with no renaming. The forward pass is static (fixed image size, no data-dependent Python branches,
patchify by convolution with the linear weight), so it traces for ONNX / OpenVINO.

Two details that a generic EVA port gets wrong, both taken from the reference code:

* the hidden-layer LayerNorm of the block MLP uses eps 1e-5 (PyTorch's default; the reference
  ignores the config's `layer_norm_epsilon` there), while every other LayerNorm uses the config eps;
* SwiGLU widths are rounded up to a multiple of 256 (2048 for the published 768-wide model).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from latentspace.models.nomic.preprocess import PREPROCESSOR_CONFIG_NAME, published_preprocessor_config
from latentspace.models.nomic.weights import SAFETENSORS, CheckpointError, load_strict, read_state_dict

CONFIG_NAME = "config.json"
ARCHITECTURE = "NomicVisionModel"
# The `auto_map` the published config carries (the code lives in a second hub repository).
PUBLISHED_AUTO_MAP = {
    "AutoConfig": "nomic-ai/nomic-bert-2048--configuration_hf_nomic_bert.NomicBertConfig",
    "AutoModel": "nomic-ai/nomic-bert-2048--modeling_hf_nomic_bert.NomicVisionModel",
}
MLP_NORM_EPS = 1e-5  # the block MLP's hidden LayerNorm: nn.LayerNorm's default, whatever the config says
MLP_MULTIPLE_OF = 256  # gated-MLP widths are rounded up to this, as the reference does
ROPE_TEMPERATURE = 10000.0


def _round_up(value: int, multiple: int) -> int:
    return (value + multiple - 1) // multiple * multiple


def _size_pair(value: Any, name: str) -> tuple[int, int]:
    if isinstance(value, (list, tuple)) and len(value) == 2:
        return int(value[0]), int(value[1])
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return int(value), int(value)
    raise ValueError(f"vision config field {name!r} must be an int or a pair of ints, got {value!r}")


# --------------------------------------------------------------------------------------------------
# config


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


# --------------------------------------------------------------------------------------------------
# 2-D rotary embedding (EVA style)


def eva_rope_2d(
    grid: tuple[int, int],
    head_dim: int,
    ref_feat_shape: tuple[int, int] | None = None,
    temperature: float = ROPE_TEMPERATURE,
    device: torch.device | str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(cos, sin) tables of shape (grid_h * grid_w, head_dim) for EVA's axial rotary embedding.

    `head_dim / 4` frequencies `temperature ** (-i / bands)`; a patch at (row, col) gets the angles
    [row * f, col * f] (row half first), each repeated twice for the interleaved rotation. With a
    `ref_feat_shape` the grid is rescaled to it (EVA's fine-tuning trick; a factor of 1 at the
    published 224 px). Computed in float32, patches in row-major order.
    """
    bands_n = head_dim // 4
    exponent = torch.arange(bands_n, dtype=torch.int64, device=device).to(torch.float32) / bands_n
    bands = 1.0 / (temperature**exponent)
    axes = [torch.arange(n, dtype=torch.int64, device=device).to(torch.float32) for n in grid]
    if ref_feat_shape is not None:
        axes = [t / n * r for t, n, r in zip(axes, grid, ref_feat_shape)]  # same operation order as EVA
    coords = torch.stack(torch.meshgrid(axes, indexing="ij"), dim=-1)  # (gh, gw, 2)
    angles = (coords.unsqueeze(-1) * bands).flatten(-2).flatten(0, 1)  # (N, 2 * bands_n)
    return angles.cos().repeat_interleave(2, -1), angles.sin().repeat_interleave(2, -1)


def _rotate_interleaved(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x * cos + rot(x) * sin with rot(x)[2i] = -x[2i+1], rot(x)[2i+1] = x[2i] (GPT-J / EVA style)."""
    pairs = x.unflatten(-1, (-1, 2))
    rotated = torch.stack((-pairs[..., 1], pairs[..., 0]), dim=-1).flatten(-2)
    return x * cos + rotated * sin


# --------------------------------------------------------------------------------------------------
# modules (attribute names = checkpoint keys)


class _GatedMLP(nn.Module):
    """fc2(norm(fc11(x) * silu(fc12(x)))): fc11 is the value ("up") branch, fc12 the gate."""

    def __init__(self, width: int, hidden: int, *, bias1: bool, bias2: bool, hidden_norm: bool) -> None:
        super().__init__()
        self.fc11 = nn.Linear(width, hidden, bias=bias1)
        self.fc12 = nn.Linear(width, hidden, bias=bias1)
        self.fc2 = nn.Linear(hidden, width, bias=bias2)
        # The EVA hidden norm; absent (no `mlp.norm.*` keys) when norm_mlp is false and in the selector.
        self.norm: nn.Module = nn.LayerNorm(hidden, eps=MLP_NORM_EPS) if hidden_norm else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.norm(self.fc11(x) * F.silu(self.fc12(x))))


class _Attention(nn.Module):
    """Self-attention with a fused block-major Wqkv ([Q; K; V], each heads x head_dim) and 2-D RoPE on
    the patch tokens; token 0 (CLS) is not rotated."""

    def __init__(self, width: int, heads: int, *, bias: bool) -> None:
        super().__init__()
        self.heads = heads
        self.head_dim = width // heads
        self.Wqkv = nn.Linear(width, 3 * width, bias=bias)
        self.out_proj = nn.Linear(width, width, bias=bias)

    def forward(self, x: torch.Tensor, cos: torch.Tensor | None, sin: torch.Tensor | None) -> torch.Tensor:
        qkv = self.Wqkv(x).unflatten(-1, (3, self.heads, self.head_dim)).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # each (B, heads, L, head_dim)
        if cos is not None and sin is not None:
            q = torch.cat((q[:, :, :1], _rotate_interleaved(q[:, :, 1:], cos, sin)), dim=2)
            k = torch.cat((k[:, :, :1], _rotate_interleaved(k[:, :, 1:], cos, sin)), dim=2)
        out = F.scaled_dot_product_attention(q, k, v)  # scale 1/sqrt(head_dim), no mask, no dropout
        return self.out_proj(out.transpose(1, 2).flatten(2))


class _Block(nn.Module):
    """Pre-LN transformer block: h + attn(norm1(h)), then + mlp(norm2(h))."""

    def __init__(self, config: NomicVisionConfig) -> None:
        super().__init__()
        eps = config.layer_norm_epsilon
        self.norm1 = nn.LayerNorm(config.n_embd, eps=eps)
        self.attn = _Attention(config.n_embd, config.n_head, bias=config.qkv_proj_bias)
        self.norm2 = nn.LayerNorm(config.n_embd, eps=eps)
        self.mlp = _GatedMLP(
            config.n_embd,
            config.mlp_hidden,
            bias1=config.mlp_fc1_bias,
            bias2=config.mlp_fc2_bias,
            hidden_norm=config.norm_mlp,
        )

    def forward(self, h: torch.Tensor, cos: torch.Tensor | None, sin: torch.Tensor | None) -> torch.Tensor:
        h = h + self.attn(self.norm1(h), cos, sin)
        return h + self.mlp(self.norm2(h))


class _Embeddings(nn.Module):
    """Patch embedding + CLS token + absolute position table (which covers CLS and patches)."""

    def __init__(self, config: NomicVisionConfig) -> None:
        super().__init__()
        self.patch_size = config.patch_size
        self.num_channels = config.num_channels
        d = config.n_embd
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d))
        # A Linear over flattened (channel, row, column) patches, as in the checkpoint.
        self.proj = nn.Linear(config.num_channels * config.patch_size**2, d, bias=config.patch_embed_bias)
        self.pos_embed: nn.Parameter | None = (
            nn.Parameter(torch.zeros(1, config.num_tokens, d)) if config.use_pos_embed else None
        )

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        p = self.patch_size
        # The Linear over (c, p1, p2)-flattened patches is exactly a stride-p convolution with the same
        # weight viewed as (D, C, p, p); a convolution exports and runs better than reshape gymnastics.
        weight = self.proj.weight.unflatten(1, (self.num_channels, p, p))
        x = F.conv2d(pixels.to(weight.dtype), weight, self.proj.bias, stride=p)  # (B, D, gh, gw)
        x = x.flatten(2).transpose(1, 2)  # (B, gh*gw, D), row-major patches
        x = torch.cat((self.cls_token.expand(x.shape[0], -1, -1), x), dim=1)
        if self.pos_embed is not None:
            x = x + self.pos_embed
        return x


class _AttentionPool(nn.Module):
    """One learned latent query attending over all tokens ([K; V] block-major in Wkv)."""

    def __init__(self, width: int, heads: int, *, bias: bool) -> None:
        super().__init__()
        self.heads = heads
        self.head_dim = width // heads
        self.latent = nn.Parameter(torch.zeros(1, 1, width))
        self.Wq = nn.Linear(width, width, bias=bias)
        self.Wkv = nn.Linear(width, 2 * width, bias=bias)
        self.out_proj = nn.Linear(width, width, bias=bias)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        q = self.Wq(self.latent.expand(h.shape[0], -1, -1))  # (B, 1, D)
        q = q.unflatten(-1, (self.heads, self.head_dim)).transpose(1, 2)  # (B, heads, 1, hd)
        k, v = self.Wkv(h).unflatten(-1, (2, self.heads, self.head_dim)).permute(2, 0, 3, 1, 4).unbind(0)
        out = F.scaled_dot_product_attention(q, k, v)  # (B, heads, 1, hd)
        return self.out_proj(out.transpose(1, 2).flatten(2))  # (B, 1, D)


class _Selector(nn.Module):
    """Nomic's "multi-head attention pooling": p = mlp(norm1(pool(h))), one vector per image, which
    the model then adds to every token (see NomicVision.forward)."""

    def __init__(self, config: NomicVisionConfig) -> None:
        super().__init__()
        self.attn = _AttentionPool(config.n_embd, config.n_head, bias=config.qkv_proj_bias)
        self.mlp = _GatedMLP(
            config.n_embd, config.mlp_hidden, bias1=config.mlp_fc1_bias, bias2=config.mlp_fc2_bias, hidden_norm=False
        )
        self.norm1 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.norm1(self.attn(h)))  # (B, 1, D)


class NomicVision(nn.Module):
    """nomic-embed-vision: pixels (B, C, H, W) normalised by `NomicImagePreprocessor` -> tokens.

    * `trunk(pixels)`: the EVA trunk's tokens, (B, 1 + patches, D), before the selector;
    * `forward(pixels)`: Nomic's `last_hidden_state`: trunk tokens + the selector vector on each;
    * `embed(pixels)`: the image embedding, L2-normalised token 0 of that, float32 (B, D).
    """

    def __init__(self, config: NomicVisionConfig) -> None:
        super().__init__()
        self.config = config
        self.embeddings = _Embeddings(config)
        self.layers = nn.ModuleList([_Block(config) for _ in range(config.n_layer)])
        self.selector = _Selector(config)
        # Fixed rotary tables: derived from the config, so never saved (the checkpoint has none).
        self.register_buffer("rope_cos", torch.empty(0), persistent=False)
        self.register_buffer("rope_sin", torch.empty(0), persistent=False)
        self.reset_rope_tables()

    def reset_rope_tables(self) -> None:
        """(Re)compute the rotary tables in float32 on the module's device (needed after `to_empty`)."""
        if not self.config.use_rotary_pos_emb:
            return
        device = self.embeddings.cls_token.device
        cos, sin = eva_rope_2d(self.config.grid, self.config.head_dim, self.config.ref_feat_shape, device=device)
        self.rope_cos, self.rope_sin = cos, sin

    def check_pixels(self, pixels: torch.Tensor) -> None:
        """Refuse input the model was not built for (a ValueError rather than a shape error deep inside).

        Skipped while `torch.jit.trace` records (OpenVINO / ONNX export): the tracer turns the shape
        comparison into warnings about tensor-to-bool conversion, and the example input fixes the
        shape of the traced graph anyway."""
        if torch.jit.is_tracing():
            return
        expected = (self.config.num_channels, *self.config.img_size)
        if pixels.dim() != 4 or tuple(pixels.shape[1:]) != expected:
            raise ValueError(
                f"NomicVision expects pixels of shape (batch, {expected[0]}, {expected[1]}, "
                f"{expected[2]}) (this model has a fixed input size; resize with "
                f"NomicImagePreprocessor), got {tuple(pixels.shape)}"
            )

    def trunk(self, pixels: torch.Tensor) -> torch.Tensor:
        self.check_pixels(pixels)
        cos = self.rope_cos if self.config.use_rotary_pos_emb else None
        sin = self.rope_sin if self.config.use_rotary_pos_emb else None
        h = self.embeddings(pixels)
        for layer in self.layers:
            h = layer(h, cos, sin)
        return h

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        h = self.trunk(pixels)
        return h + self.selector(h)  # the pooled vector is broadcast onto every token

    def embed(self, pixels: torch.Tensor) -> torch.Tensor:
        h = self.trunk(pixels)
        # == forward(pixels)[:, 0] (same float ops), without materialising the other tokens.
        first = h[:, 0] + self.selector(h)[:, 0]
        return F.normalize(first.float(), dim=-1)


# --------------------------------------------------------------------------------------------------
# directories


def _read_config_json(directory: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((directory / CONFIG_NAME).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _names_vision_model(value: Any) -> bool:
    if isinstance(value, str):
        return value == ARCHITECTURE or value.endswith("." + ARCHITECTURE)
    if isinstance(value, (list, tuple)):
        return any(_names_vision_model(v) for v in value)
    return False


def is_nomic_vision_dir(path: str | Path) -> bool:
    """A directory whose config.json declares the Nomic vision model, by `architectures` or by an
    `auto_map` entry naming `...NomicVisionModel`. `model_type` ("nomic_bert") cannot tell: the text
    model has the same one."""
    config = _read_config_json(Path(path))
    if config is None:
        return False
    if _names_vision_model(config.get("architectures") or []):
        return True
    auto_map = config.get("auto_map")
    return isinstance(auto_map, dict) and any(_names_vision_model(v) for v in auto_map.values())


_PREFIXES = ("vision_model.", "model.", "trunk.")


def _is_derived_buffer(key: str) -> bool:
    """Buffers some writers save although they follow from the config (attention scale, RoPE tables)."""
    parts = key.split(".")
    return parts[-1] in ("norm_factor", "inv_freq", "rope_cos", "rope_sin") or "rope" in parts[:-1]


def normalise_vision_keys(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Checkpoint keys -> this module's names: drop derived buffers (`*.norm_factor`, RoPE tables),
    then strip a `vision_model.` / `model.` / `trunk.` prefix when *every* key carries it (training
    checkpoints and some exporters nest the model). Anything else is left for the strict load to name."""
    out = {k: v for k, v in state.items() if not _is_derived_buffer(k)}
    stripped = True
    while stripped and out:
        stripped = False
        for prefix in _PREFIXES:
            if all(k.startswith(prefix) for k in out):
                out = {k[len(prefix) :]: v for k, v in out.items()}
                stripped = True
                break
    return out


def read_vision_config(directory: str | Path) -> NomicVisionConfig:
    """`directory/config.json` -> NomicVisionConfig; errors name the file."""
    path = Path(directory) / CONFIG_NAME
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError as e:
        raise CheckpointError(f"{path} is missing: not a model directory") from e
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path} could not be read as JSON: {e}") from e
    if not isinstance(raw, dict):
        raise CheckpointError(f"{path} must hold a JSON object")
    try:
        return NomicVisionConfig.from_hf_dict(raw)
    except (ValueError, TypeError) as e:
        raise ValueError(f"{path}: {e}") from e


def _uninitialised(config: NomicVisionConfig) -> NomicVision:
    """A CPU module with allocated but unset parameters: every one of them is about to be overwritten
    by a strict load, so running the random initialisers (seconds at full size) would be wasted."""
    with torch.device("meta"):
        module = NomicVision(config)
    module = module.to_empty(device="cpu")
    module.reset_rope_tables()
    return module


def load_nomic_vision(directory: str | Path) -> NomicVision:
    """Load a Nomic vision model directory (config.json + weights) strictly, in eval mode.

    Raises ValueError (for the config) or CheckpointError (for the weights) with one message; no
    partly loaded module is ever returned."""
    directory = Path(directory)
    config = read_vision_config(directory)
    state = normalise_vision_keys(read_state_dict(directory))
    module = _uninitialised(config)
    load_strict(module, state, source=str(directory))
    return module.eval()


def save_nomic_vision(module: NomicVision, directory: str | Path) -> Path:
    """Write `model.safetensors`, `config.json` and `preprocessor_config.json` in the published layout
    (checkpoint key names, float32), so `load_nomic_vision` (and Nomic's own code) reads it back."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in module.state_dict().items()}
    save_file(state, str(directory / SAFETENSORS), metadata={"format": "pt"})
    (directory / CONFIG_NAME).write_text(json.dumps(module.config.to_hf_dict(), indent=2) + "\n")
    h, w = module.config.img_size
    (directory / PREPROCESSOR_CONFIG_NAME).write_text(json.dumps(published_preprocessor_config(h, w), indent=2) + "\n")
    return directory


__all__ = [
    "NomicVisionConfig",
    "NomicVision",
    "eva_rope_2d",
    "is_nomic_vision_dir",
    "normalise_vision_keys",
    "read_vision_config",
    "load_nomic_vision",
    "save_nomic_vision",
]
