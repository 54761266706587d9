"""NomicBERT (nomic-embed-text v1 / v1.5, nomic-bert-2048) as a plain PyTorch module.

Why our own module: Nomic publishes the model as Hugging Face "remote code", which needs
`trust_remote_code`, a hub download of a second repository and, under transformers 5, no longer
runs. transformers >= 5 has a native class, but it only reads the 2026 config spelling and
older transformers have none. This module reads either config spelling, loads the published
`model.safetensors` without a key map (the attribute tree *is* the checkpoint's key tree), and
refuses a mismatched checkpoint instead of leaving random weights behind. Here is the forward
pass; models/nomic/text_config.py reads the config and models/nomic/text_dir.py the directories.

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

import torch
import torch.nn.functional as F
from torch import nn

from latentspace.models.nomic.text_config import NomicTextConfig

# The act of each gated MLP's gate (text_config.GATED_ACTIVATIONS); plain MLPs all use the erf GELU.
_GATE_ACT = {"swiglu": F.silu, "geglu": F.gelu, "glu": torch.sigmoid}


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
        self.act = _GATE_ACT[config.activation]

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
