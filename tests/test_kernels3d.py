"""The 3D Triton kernels and the fused 3D network against PyTorch (the interpreter on a CPU;
tiny odd shapes: the interpreter is about 1000x slower than a GPU). Outputs are poisoned
(NaN, 255) before each run, so an element a kernel fails to write shows."""

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from reference import TOL, reference_forward, rel_err

from fastunet import ReferenceUNet, UNetConfig
from fastunet.engine import make_predictor
from fastunet.kernels import conv3d, head, upconv3d
from fastunet.kernels._utils import compute_dtype


def ndhwc(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return x.permute(0, 2, 3, 4, 1).contiguous().to(dtype)


def ncdhw(x: torch.Tensor) -> torch.Tensor:
    return x.float().permute(0, 4, 1, 2, 3)


def nan(shape, dtype) -> torch.Tensor:
    return torch.full(shape, float("nan"), dtype=dtype)


def _tol(dtype: str) -> float:
    return TOL[dtype][0] * 4 if dtype in ("fp32", "tf32") else 1e-2


@pytest.mark.parametrize("dtype, case", [("bf16", "pool222"), ("tf32", "packed-pool122"), ("fp16", "crop-concat")])
def test_conv3x3x3_matches_conv3d(dtype, case):
    storage, _ = compute_dtype(dtype)
    if case == "pool222":  # one source, a looped K, the 2x2x2 pool in the epilogue
        x, up = torch.randn(2, 5, 6, 8, 10), None
        weight, bias = torch.randn(6, 5, 3, 3, 3) * 0.2, torch.randn(6)
        cat, pool = x, (2, 2, 2)
    elif case == "packed-pool122":  # 3 channels: K = 81 packed into one 128-wide dot; the 1x2x2 pool
        x, up = torch.randn(1, 3, 5, 8, 6), None
        weight, bias = torch.randn(5, 3, 3, 3, 3) * 0.2, torch.randn(5)
        cat, pool = x, (1, 2, 2)
        assert conv3d.packed_k(3) == 128
    else:  # the decoder's: the skip center-cropped by (2, 1, 2) on the fly, then the up-conv output
        x, up = torch.randn(1, 3, 9, 8, 11), torch.randn(1, 2, 5, 6, 7)
        weight, bias = torch.randn(7, 5, 3, 3, 3) * 0.2, torch.randn(7)
        cat, pool = torch.cat([x[:, :, 2:7, 1:7, 2:9], up], 1), None
    rounded = lambda t: t.to(storage).float()  # noqa: E731 - the kernels read the storage dtype
    expected = torch.relu(F.conv3d(rounded(cat), rounded(weight), bias))
    out = nan((expected.shape[0], *expected.shape[2:], expected.shape[1]), storage)
    pooled = None if pool is None else nan((out.shape[0], *(n // f for n, f in zip(out.shape[1:4], pool)), out.shape[4]),
                                           storage)
    y, p = conv3d.conv3x3x3(ndhwc(x, storage), conv3d.pack_weight(weight, storage), bias,
                            up=None if up is None else ndhwc(up, storage), pool=pool, out=out, pooled=pooled,
                            dtype=dtype)
    assert rel_err(ncdhw(y), expected) <= _tol(dtype)
    if pool is not None:  # the max of the stored (rounded) values, exactly
        torch.testing.assert_close(ncdhw(p), F.max_pool3d(ncdhw(y), pool), rtol=0, atol=0)


@pytest.mark.parametrize("dtype", ["bf16", "fp32"])
def test_upconv3d_and_the_fused_head_match_pytorch(dtype):
    storage, _ = compute_dtype(dtype)
    rounded = lambda t: t.to(storage).float()  # noqa: E731
    x = torch.randn(2, 6, 3, 4, 5)
    weight, bias = torch.randn(6, 5, 2, 2, 2), torch.randn(5)  # 2x2x2 (the network test runs 1x2x2)
    expected = F.conv_transpose3d(rounded(x), rounded(weight), bias, stride=2)
    out = upconv3d.upconv3d(ndhwc(x, storage), upconv3d.pack_weight(weight, storage), bias, factor=(2, 2, 2),
                            out=nan((2, 6, 8, 10, 5), storage), dtype=dtype)
    assert rel_err(ncdhw(out), expected) <= _tol(dtype)
    feats = torch.randn(2, 5, 5, 6, 7)
    w, b, hw, hb = torch.randn(6, 5, 3, 3, 3) * 0.3, torch.randn(6), torch.randn(3, 6, 1, 1, 1), torch.randn(3)
    mid = rounded(torch.relu(F.conv3d(rounded(feats), rounded(w), b)))  # stored in the storage dtype
    scores = F.conv3d(mid, rounded(hw), hb)
    logits, probs, labels = nan((2, 3, 3, 4, 5), torch.float32), nan((2, 3, 3, 4, 5), torch.float16), torch.full(
        (2, 3, 4, 5), 255, dtype=torch.uint8)
    conv3d.conv3x3x3_head(ndhwc(feats, storage), conv3d.pack_weight(w, storage), b,
                          head.pack_weight(hw[..., 0], storage), hb, logits=logits, dtype=dtype)
    conv3d.conv3x3x3_head(ndhwc(feats, storage), conv3d.pack_weight(w, storage), b,
                          head.pack_weight(hw[..., 0], storage), hb, probs=probs, labels=labels, dtype=dtype)
    assert rel_err(logits, scores) <= _tol(dtype)
    assert torch.equal(labels.long(), logits.argmax(1))
    torch.testing.assert_close(probs.float(), logits.softmax(1), atol=2e-3, rtol=1e-2)


def test_fused_3d_network_matches_the_reference_through_the_triton_backend():
    """Packed first layer, the 1x2x2 pool and up-convolution, the crop-concat and the fused head."""
    model = ReferenceUNet(UNetConfig(base_channels=2, depth=1, num_classes=3, spatial_dims=3, pools=((1, 2, 2),)))
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (torch.nn.Conv3d, torch.nn.ConvTranspose3d)):
                m.bias.normal_(0.0, 0.1)
    model.eval()
    predictor = make_predictor(model, backend="triton", device="cpu", dtype="fp32")
    net = predictor.net
    assert type(net).__name__ == "FusedUNet3D" and net.fuse_head
    x = torch.randn(1, 1, 13, 18, 22)  # (13, 18, 22) -> (1, 2, 6): an odd Z tile, unequal Y and X
    net._plan(1, *x.shape[2:])
    for plan in net._plans.values():
        for f in dataclasses.fields(plan):
            value = getattr(plan, f.name)
            for t in value if isinstance(value, list) else [value]:
                if isinstance(t, torch.Tensor):
                    t.fill_(255 if t.dtype == torch.uint8 else float("nan"))
    logits = net(x).clone()
    expected = reference_forward(model, x, "fp32")
    assert logits.shape == expected.shape == (1, 3, 1, 2, 6)
    assert rel_err(logits, expected) <= TOL["fp32"][1] * 4
    pred = predictor.predict(x, "both")
    assert torch.equal(pred.labels.long(), logits.argmax(1))
    torch.testing.assert_close(pred.probs.float(), logits.softmax(1), atol=2e-3, rtol=1e-2)
