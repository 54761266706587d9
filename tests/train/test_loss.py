import torch
import torch.nn.functional as F

from latentspace.train.loss import LogitScale, contrastive_loss


def _clip_reference(img, txt, scale):
    logits = scale * F.normalize(img, dim=-1) @ F.normalize(txt, dim=-1).T
    t = torch.arange(len(img))
    return (F.cross_entropy(logits, t) + F.cross_entropy(logits.T, t)) / 2


def test_equals_clip_loss_when_captions_are_distinct():
    img, txt = torch.randn(6, 8), torch.randn(6, 8)
    scale = torch.tensor(10.0)
    ref = _clip_reference(img, txt, scale)
    torch.testing.assert_close(contrastive_loss(img, txt, scale), ref)


def test_repeated_caption_equals_the_shared_positive_loss():
    img, txt = torch.randn(4, 8), torch.randn(4, 8)
    txt[3] = txt[0]  # sample 3 has sample 0's caption
    scale = torch.tensor(5.0)
    logits = scale * F.normalize(img, dim=-1) @ F.normalize(txt, dim=-1).T
    targets = torch.tensor([[0.5, 0, 0, 0.5], [0, 1, 0, 0], [0, 0, 1, 0], [0.5, 0, 0, 0.5]])
    by_hand = (
        -(targets * logits.log_softmax(1)).sum(1).mean() / 2 - (targets * logits.T.log_softmax(1)).sum(1).mean() / 2
    )
    torch.testing.assert_close(contrastive_loss(img, txt, scale), by_hand)


def test_logit_scale_learns_and_is_clamped():
    s = LogitScale(0.07, max_scale=20.0)
    assert abs(s().item() - 1 / 0.07) < 1e-3 or s().item() == 20.0
    s.value.data.fill_(10.0)
    assert abs(s().item() - 20.0) < 1e-4
    s.value.data.fill_(1.0)
    loss = contrastive_loss(torch.randn(4, 8, requires_grad=True), torch.randn(4, 8), s())
    loss.backward()
    assert s.value.grad is not None
