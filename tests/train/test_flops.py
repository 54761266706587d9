import pytest
import torch
from torch import nn

from latentspace.train.flops import count_flops, mfu, peak_tflops


def test_counts_forward_and_backward_of_a_linear_layer():
    batch, d_in, d_out = 8, 16, 4
    layer = nn.Linear(d_in, d_out)
    x = torch.randn(batch, d_in, requires_grad=True)
    one_matmul = 2 * batch * d_in * d_out
    # Forward alone: one matmul (the bias add is elementwise, not counted).
    assert count_flops(lambda: layer(x)) == one_matmul
    # Backward adds the input gradient and the weight gradient: two more matmuls of the same size.
    assert count_flops(lambda: layer(x).sum().backward()) == 3 * one_matmul


def test_frozen_weights_and_input_skip_the_backward_matmuls():
    layer = nn.Linear(16, 4).requires_grad_(False)
    x = torch.randn(8, 16)
    assert count_flops(lambda: layer(x)) == 2 * 8 * 16 * 4


def test_mfu_is_achieved_over_peak():
    # 500 TFLOP in 1 s on a 1000 TFLOP/s device: 50 %.
    assert mfu(500 * 10**12, 1.0, 1000.0) == pytest.approx(0.5)
    assert mfu(500 * 10**12, 2.0, 1000.0) == pytest.approx(0.25)
    assert mfu(10**12, 1.0, None) is None


@pytest.mark.parametrize(
    "name, precision, expected",
    [
        ("NVIDIA H100 80GB HBM3", "bf16", 989.0),
        ("NVIDIA H100 80GB HBM3", "fp32", 494.5),
        ("NVIDIA H100 PCIe", "bf16", 756.0),
        ("NVIDIA H200", "bf16", 989.0),
        ("NVIDIA A100-SXM4-80GB", "bf16", 312.0),
        ("cpu", "fp32", None),
        ("Some Future GPU", "bf16", None),
    ],
)
def test_peak_lookup(name, precision, expected):
    assert peak_tflops(name, precision) == expected
