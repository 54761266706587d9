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
with no renaming (models/nomic/vision_config.py reads the config, models/nomic/vision_dir.py the
directories). The forward pass is static (fixed image size, no data-dependent Python branches,
patchify by convolution with the linear weight), so it traces for ONNX / OpenVINO.

Two details that a generic EVA port gets wrong, both taken from the reference code:

* the hidden-layer LayerNorm of the block MLP uses eps 1e-5 (PyTorch's default; the reference
  ignores the config's `layer_norm_epsilon` there), while every other LayerNorm uses the config eps;
* SwiGLU widths are rounded up to a multiple of 256 (2048 for the published 768-wide model).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from latentspace.models.nomic.vision_config import NomicVisionConfig

MLP_NORM_EPS = 1e-5  # the block MLP's hidden LayerNorm: nn.LayerNorm's default, whatever the config says
ROPE_TEMPERATURE = 10000.0


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
