"""Gradient caching gives the gradients of one plain backward pass over the whole batch.

Everything runs in float64 so that "equal" can mean equal to ~1e-12, not "close enough": a
missing RNG replay, a mis-sliced cached gradient or a lost logit-scale gradient would all show up
as differences of order 1e-2 or more.
"""

from __future__ import annotations

import contextlib

import pytest
import timm
import torch
from torch import nn

from latentspace.train.gradcache import Trainable, cached_backward
from latentspace.train.loss import LogitScale, contrastive_loss

DIM = 32
TIGHT = {"rtol": 1e-9, "atol": 1e-12}


class ImageEncoder(nn.Module):
    """A 2-block ViT on 16 px images (4 patches) plus a projection into the text space."""

    def __init__(self, drop: float):
        super().__init__()
        self.trunk = timm.create_model(
            "vit_tiny_patch16_224",
            pretrained=False,
            img_size=16,
            patch_size=8,
            depth=2,
            num_classes=0,
            drop_rate=drop,
            pos_drop_rate=drop,
            proj_drop_rate=drop,
            attn_drop_rate=drop,
            drop_path_rate=drop,
        )
        self.proj = nn.Linear(self.trunk.num_features, DIM)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.proj(self.trunk(images))


class TokenEncoder(nn.Module):
    """Mean of token embeddings through an MLP; accepts a LongTensor or a list of token-id lists."""

    def __init__(self, drop: float, vocab: int = 50):
        super().__init__()
        self.embed = nn.Embedding(vocab, 16)
        self.mlp = nn.Sequential(nn.Linear(16, 48), nn.GELU(), nn.Dropout(drop), nn.Linear(48, DIM))

    def forward(self, tokens) -> torch.Tensor:
        tokens = tokens if isinstance(tokens, torch.Tensor) else torch.tensor(tokens)
        return self.mlp(self.embed(tokens).mean(1))


def _towers(drop: float):
    torch.manual_seed(0)
    image_enc = ImageEncoder(drop).double().train()
    text_enc = TokenEncoder(drop).double().train()
    scale = LogitScale(0.07).double()
    return image_enc, text_enc, scale


def _data(n: int):
    gen = torch.Generator().manual_seed(1)
    images = torch.randn(n, 3, 16, 16, generator=gen, dtype=torch.float64)
    text_emb = torch.randn(n, DIM, generator=gen, dtype=torch.float64)
    tokens = torch.randint(0, 50, (n, 6), generator=gen)
    return images, text_emb, tokens


def _grads(*modules: nn.Module) -> dict[str, torch.Tensor]:
    out = {}
    for m_index, module in enumerate(modules):
        for name, p in module.named_parameters():
            if p.requires_grad:
                assert p.grad is not None, f"{name} got no gradient"
                out[f"{m_index}.{name}"] = p.grad.clone()
    return out


def _zero(*modules: nn.Module) -> None:
    for module in modules:
        module.zero_grad(set_to_none=True)


def _image_text_step(image_enc, images, scale, chunk, text) -> float:
    """A gradient-cached image-text step as the trainer takes it: `text` is a frozen tower's
    embeddings (a Tensor) or a Trainable text tower."""
    towers = [Trainable(image_enc, images), text]
    return float(cached_backward(towers, lambda img, txt: contrastive_loss(img, txt, scale()), chunk))


def _reference(image_enc, scale, images, forward_chunk, *, text_emb=None, text_enc=None, tokens=None):
    """Plain autograd over the whole batch: one graph, one backward. Forwarding in `forward_chunk`
    pieces (all kept in the graph) draws dropout masks in the same order as the gradient cache."""

    def encode(encoder, inputs):
        return torch.cat([encoder(inputs[s : s + forward_chunk]) for s in range(0, len(inputs), forward_chunk)])

    img = encode(image_enc, images)
    txt = text_emb if text_enc is None else encode(text_enc, tokens)
    loss = contrastive_loss(img, txt, scale())
    loss.backward()
    return loss.item()


def test_equals_one_forward_backward_on_the_whole_batch():
    image_enc, _, scale = _towers(drop=0.0)
    images, text_emb, _ = _data(16)

    ref_loss = _reference(image_enc, scale, images, forward_chunk=16, text_emb=text_emb)
    ref = _grads(image_enc, scale)
    _zero(image_enc, scale)

    loss = _image_text_step(image_enc, images, scale, 4, text_emb)
    torch.testing.assert_close(_grads(image_enc, scale), ref, **TIGHT)
    assert loss == pytest.approx(ref_loss, rel=1e-12)
    assert scale.value.grad.abs() > 0  # the logit scale is trained, not skipped


def test_replays_dropout_and_drop_path_and_leaves_the_rng_as_one_pass_would():
    image_enc, _, scale = _towers(drop=0.2)
    images, text_emb, _ = _data(16)
    # The model really is stochastic: without the RNG replay, step (c) would see other masks.
    torch.manual_seed(5)
    first = image_enc(images[:4])
    assert not torch.allclose(first, image_enc(images[:4]))

    torch.manual_seed(7)
    ref_loss = _reference(image_enc, scale, images, forward_chunk=4, text_emb=text_emb)
    ref, ref_rng = _grads(image_enc, scale), torch.get_rng_state()
    _zero(image_enc, scale)

    torch.manual_seed(7)
    loss = _image_text_step(image_enc, images, scale, 4, text_emb)
    torch.testing.assert_close(_grads(image_enc, scale), ref, **TIGHT)
    assert loss == pytest.approx(ref_loss, rel=1e-12)
    assert torch.equal(torch.get_rng_state(), ref_rng)


@pytest.mark.parametrize("as_list", [False, True], ids=["token-tensor", "token-lists"])
def test_trainable_text_tower(as_list: bool):
    image_enc, text_enc, scale = _towers(drop=0.2)
    images, _, tokens = _data(16)

    torch.manual_seed(3)
    ref_loss = _reference(image_enc, scale, images, forward_chunk=4, text_enc=text_enc, tokens=tokens)
    ref = _grads(image_enc, text_enc, scale)
    _zero(image_enc, text_enc, scale)

    torch.manual_seed(3)
    texts = tokens.tolist() if as_list else tokens
    loss = _image_text_step(image_enc, images, scale, 4, Trainable(text_enc, texts))
    torch.testing.assert_close(_grads(image_enc, text_enc, scale), ref, **TIGHT)
    assert loss == pytest.approx(ref_loss, rel=1e-12)


def test_a_short_last_chunk_is_exact():
    """Decision: a chunk that does not divide the batch is allowed here (chunks 4, 4, 2); the
    config-level check (distributed.check_global_batch) is where such a chunk is refused."""
    image_enc, _, scale = _towers(drop=0.1)
    images, text_emb, _ = _data(10)

    torch.manual_seed(11)
    _reference(image_enc, scale, images, forward_chunk=4, text_emb=text_emb)
    ref = _grads(image_enc, scale)
    _zero(image_enc, scale)

    torch.manual_seed(11)
    _image_text_step(image_enc, images, scale, 4, text_emb)
    torch.testing.assert_close(_grads(image_enc, scale), ref, **TIGHT)


class _Recorder(nn.Module):
    """A linear encoder that records, for every forward with grad, whether it would sync."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(5, DIM).double()
        self.syncing = True
        self.synced_calls: list[bool] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled():
            self.synced_calls.append(self.syncing)
        return self.linear(x)


class _SyncRecorder(_Recorder):
    """Stands in for a DDP module: sync is switched off inside no_sync()."""

    @contextlib.contextmanager
    def no_sync(self):
        self.syncing = False
        try:
            yield
        finally:
            self.syncing = True


def test_shared_encoder_syncs_once_on_its_last_chunk():
    """A text-text loss: two towers, one encoder. Only the very last backward through it may
    all-reduce under DDP, and the gradients (summed over both towers) are still exact."""
    torch.manual_seed(0)
    encoder, scale = _SyncRecorder(), LogitScale().double()
    gen = torch.Generator().manual_seed(2)
    queries, documents = torch.randn(2, 6, 5, generator=gen, dtype=torch.float64)

    loss = contrastive_loss(encoder(queries), encoder(documents), scale())
    loss.backward()
    ref = _grads(encoder, scale)
    _zero(encoder, scale)
    encoder.synced_calls.clear()

    cached_backward(
        [Trainable(encoder, queries), Trainable(encoder, documents)],
        lambda q, d: contrastive_loss(q, d, scale()),
        chunk=2,
    )
    assert encoder.synced_calls == [False] * 5 + [True]
    torch.testing.assert_close(_grads(encoder, scale), ref, **TIGHT)


def test_fixed_tower_gets_no_gradient():
    image_enc, _, scale = _towers(drop=0.0)
    images, text_emb, _ = _data(8)
    text_emb.requires_grad_()
    _image_text_step(image_enc, images, scale, 4, text_emb)
    assert text_emb.grad is None


def test_bad_arguments_fail_clearly():
    image_enc, _, scale = _towers(drop=0.0)
    images, text_emb, _ = _data(8)
    with pytest.raises(ValueError, match="chunk must be at least 1"):
        _image_text_step(image_enc, images, scale, 0, text_emb)
    with pytest.raises(ValueError, match=r"same number of samples, got \[8, 7\]"):
        _image_text_step(image_enc, images, scale, 4, text_emb[:7])
    with pytest.raises(ValueError, match="nothing to back-propagate"):
        cached_backward([text_emb, text_emb], lambda a, b: contrastive_loss(a, b, scale()), chunk=4)


class _FsdpSyncRecorder(_Recorder):
    """Stands in for an FSDP module: sync is switched with set_requires_gradient_sync."""

    def set_requires_gradient_sync(self, requires: bool) -> None:
        self.syncing = requires


@pytest.mark.parametrize("recorder", [_SyncRecorder, _FsdpSyncRecorder], ids=["ddp-no_sync", "fsdp-set_sync"])
def test_sync_is_deferred_through_wrappers_named_by_synced(recorder):
    """The trainer calls its towers through autocast wrappers and lambdas: `synced` names the
    module behind them, so its sync is still deferred to the last chunk, once for both towers."""
    torch.manual_seed(0)
    encoder, scale = recorder(), LogitScale().double()
    gen = torch.Generator().manual_seed(2)
    queries, documents = torch.randn(2, 6, 5, generator=gen, dtype=torch.float64)
    cached_backward(
        [
            Trainable(lambda x: encoder(x), queries, synced=encoder),
            Trainable(lambda x: encoder(x), documents, synced=encoder),
        ],
        lambda q, d: contrastive_loss(q, d, scale()),
        chunk=2,
    )
    assert encoder.synced_calls == [False] * 5 + [True]
    assert encoder.syncing  # switched back on afterwards
