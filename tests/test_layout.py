"""The channels-last staging kernel (kernels/layout.py) on its own: NCHW (any strides) to NHWC and
back, the ReLU-gated copy of a gradient, the 2-D transpose. Both tilings run here: the
interpreter's (FLAT, a tile's pixels running across images) and the GPU's (a tile per image),
whose code the GPU check otherwise runs alone. Outputs are poisoned, so every element must be
written; sizes straddle tile edges in pixels (BLOCK_S) and channels (BLOCK_C)."""
import pytest
import torch

from tritonnet import runtime
from tritonnet.kernels import layout


@pytest.fixture(params=[True, False], ids=["flat", "per-image"])
def tiling(request, monkeypatch):
    monkeypatch.setattr(layout, "FLAT", request.param)
    layout._plan.cache_clear()
    with runtime.poisoned_outputs():
        yield request.param
    layout._plan.cache_clear()


SHAPES = [(1, 3, 5, 7), (3, 70, 9, 11), (2, 16, 17, 16), (5, 1, 4, 4)]  # odd, > BLOCK_C, > BLOCK_S pixels


def _packed_mask(live: torch.Tensor) -> torch.Tensor:
    """[C, P] booleans as the conv forward's ReLU bit mask: bit m % 8 of byte m // 8 of each row."""
    c, p = live.shape
    padded = torch.zeros(c, -(-p // 8) * 8, dtype=torch.int32)
    padded[:, :p] = live.to(torch.int32)
    weights = 2 ** torch.arange(8, dtype=torch.int32)
    return (padded.view(c, -1, 8) * weights).sum(-1).to(torch.uint8)


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_staging_copies_every_element(tiling, seed, device, shape):
    b, c, h, w = shape
    x = torch.randn(shape, device=device)
    expected = x.permute(0, 2, 3, 1).contiguous()
    assert torch.equal(layout.to_channels_last(x), expected)
    # a channels-last source, and a strided one (every other column of a wider tensor)
    assert torch.equal(layout.to_channels_last(x.contiguous(memory_format=torch.channels_last)), expected)
    wide = torch.randn(b, c, h, 2 * w, device=device)
    assert torch.equal(layout.to_channels_last(wide[..., ::2]), wide[..., ::2].permute(0, 2, 3, 1).contiguous())
    # and back: a channels-last tensor to contiguous NCHW
    back = layout.to_contiguous(expected.permute(0, 3, 1, 2))
    assert back.is_contiguous() and torch.equal(back, x)
    # the ReLU-gated copy of a gradient: zero where the forward's output was not positive
    live = torch.rand(c, b * h * w) < 0.5
    mask = _packed_mask(live).to(device)
    gated = layout.to_channels_last(x, relu_mask=mask)
    keep = live.view(c, b, h, w).permute(1, 2, 3, 0).to(device)
    assert torch.equal(gated, torch.where(keep, expected, torch.zeros_like(expected)))


def test_transposed_and_empty(tiling, seed, device):
    a = torch.randn(37, 300, device=device)
    assert torch.equal(layout.transposed(a), a.t().contiguous())
    assert torch.equal(layout.transposed(a[:, ::3]), a[:, ::3].t().contiguous())
    assert layout.to_channels_last(torch.randn(0, 4, 3, 3, device=device)).shape == (0, 3, 3, 4)
