"""The 3D Triton kernels and the fused 3D network against PyTorch (the interpreter on a CPU;
tiny odd shapes: the interpreter is about 1000x slower than a GPU). Outputs are poisoned
(NaN, 255) before each run, so an element a kernel fails to write shows."""


import pytest
import torch
import torch.nn.functional as F
import triton
from reference import TOL, poison_plans, reference_forward, rel_err

from fastunet import ReferenceUNet, UNetConfig
from fastunet.engine import make_predictor
from fastunet.kernels import conv3d, head, rowrun, upconv3d
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


def _rowrun(r, bw, bn, bk, rd=1):
    return triton.Config(dict(R=r, RD=rd, BW=bw, BN=bn, BK=bk), num_warps=4, num_stages=1,
                         pre_hook=rowrun.set_block_shapes)


# The bf16 network test below runs the interpreter's default tiles: two planes of two rows for
# its 2x2x2 pool, the decoder's crop-concat, the head; here the other tiles.
@pytest.mark.parametrize("dtype, case, cfg", [
    ("fp16", "pool122", _rowrun(4, 16, 16, 16)),  # four rows of a plane, the 1x2x2 pool; partial K and N blocks
    ("bf16", "flat", _rowrun(1, 32, 16, 16)),  # a flat tile wrapping rows, planes and images
])
def test_rowrun_conv3x3x3_matches_conv3d(dtype, case, cfg):
    """The 2D convs' TMA row-run loop with 27 taps (KD = 3) against F.conv3d."""
    storage, _ = compute_dtype(dtype)
    pool = None
    if case == "pool122":
        x, c_out, pool = torch.randn(1, 24, 5, 8, 10), 24, (1, 2, 2)
    else:
        x, c_out = torch.randn(2, 8, 5, 6, 7), 16
    weight, bias = torch.randn(c_out, x.shape[1], 3, 3, 3) * (2 / (27 * x.shape[1])) ** 0.5, torch.randn(c_out)
    rounded = lambda t: t.to(storage).float()  # noqa: E731
    expected = torch.relu(F.conv3d(rounded(x), rounded(weight), bias))
    xs, ws = ndhwc(x, storage), conv3d.pack_weight(weight, storage)
    assert rowrun.eligible(storage, ws, xs)
    out = nan((expected.shape[0], *expected.shape[2:], c_out), storage)
    pooled = None if pool is None else nan((out.shape[0], *(n // f for n, f in zip(out.shape[1:4], pool)), c_out),
                                           storage)
    y, p = conv3d.conv3x3x3(xs, ws, bias, pool=pool, out=out, pooled=pooled, dtype=dtype, config=cfg)
    assert rel_err(ncdhw(y), expected) <= _tol(dtype)
    if pool is not None:  # the max of the stored (rounded) values, exactly
        torch.testing.assert_close(ncdhw(p), F.max_pool3d(ncdhw(y), pool), rtol=0, atol=0)


def test_rowrun_conv3x3x3_rejects_a_forced_row_run_config_tma_cannot_read():
    x, w = torch.zeros(1, 5, 5, 5, 12, dtype=torch.bfloat16), conv3d.pack_weight(torch.randn(8, 12, 3, 3, 3), torch.bfloat16)
    with pytest.raises(ValueError, match="row-run config was forced"):  # 12 channels: not a multiple of 8
        conv3d.conv3x3x3(x, w, torch.zeros(8), dtype="bf16", config=_rowrun(2, 16, 16, 16))


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


@pytest.mark.parametrize("dtype, base, pool, size, out", [
    ("fp32", 2, (1, 2, 2), (13, 18, 22), (1, 2, 6)),  # the pointer loops: an odd Z tile, unequal Y and X
    # the row-run loop (KD = 3) for every conv but the first (two-plane tiles for the 2x2x2 pool) and for the head
    ("bf16", 8, (2, 2, 2), (18, 18, 18), (2, 2, 2)),
])
def test_fused_3d_network_matches_the_reference_through_the_triton_backend(dtype, base, pool, size, out):
    """Packed first layer, the pool and up-convolution, the crop-concat and the fused head."""
    model = ReferenceUNet(UNetConfig(base_channels=base, depth=1, num_classes=3, spatial_dims=3, pools=(pool,)))
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (torch.nn.Conv3d, torch.nn.ConvTranspose3d)):
                m.bias.normal_(0.0, 0.1)
    model.eval()
    predictor = make_predictor(model, backend="triton", device="cpu", dtype=dtype)
    net = predictor.net
    assert type(net).__name__ == "FusedUNet3D" and net.fuse_head
    x = torch.randn(1, 1, *size)
    net._plan(1, *x.shape[2:])
    poison_plans(net)
    expected = reference_forward(model, x, dtype)
    assert expected.shape == (1, 3, *out)
    if dtype == "fp32":  # the scores, then the probabilities and labels of a second run against them
        logits = net(x).clone()
        assert rel_err(logits, expected) <= TOL[dtype][1] * 4
    else:  # one run (the interpreter is slow): the probabilities and labels against the reference's
        logits = expected
    pred = predictor.predict(x, "both")
    assert torch.equal(pred.labels.long(), logits.argmax(1))
    torch.testing.assert_close(pred.probs.float(), logits.softmax(1), atol=2e-3, rtol=1e-2)


@pytest.mark.gpu
@pytest.mark.timeout(600)
def test_every_rowrun_3d_config_gpu():
    """Every 3D row-run config (8 warps and the two-plane tiles included) against F.conv3d,
    bf16, sizes that leave partial tiles: a decoder conv with two sources, an encoder conv with
    each pool its tile can run, and a single-source conv for the flat tiles."""
    from fastunet.kernels import rowconv
    from fastunet.model import center_crop

    g = torch.Generator(device="cuda").manual_seed(24)
    st, q = torch.bfloat16, (lambda t: t.to(torch.bfloat16).float())
    skip = torch.randn(1, 32, 14, 30, 34, device="cuda", generator=g)
    up = torch.randn(1, 32, 8, 18, 20, device="cuda", generator=g)
    w2 = torch.randn(64, 64, 3, 3, 3, device="cuda", generator=g) * (2 / (27 * 64)) ** 0.5
    w1 = torch.randn(64, 32, 3, 3, 3, device="cuda", generator=g) * (2 / (27 * 32)) ** 0.5
    bias = torch.randn(64, device="cuda", generator=g)
    cat = torch.cat([center_crop(skip, 8, 18, 20), up], 1)
    expected2 = torch.relu(F.conv3d(q(cat), q(w2), bias))
    expected1 = torch.relu(F.conv3d(q(skip), q(w1), bias))
    for cfg in rowconv.rowrun_configs(3):
        out = nan((1, 12, 28, 32, 64), st).cuda()
        if cfg.kwargs["R"] == 1:
            conv3d.conv3x3x3(ndhwc(skip, st), conv3d.pack_weight(w1, st), bias, out=out, dtype="bf16", config=cfg)
            assert rel_err(ncdhw(out), expected1) <= _tol("bf16"), cfg
            continue
        out2 = nan((1, 6, 16, 18, 64), st).cuda()
        conv3d.conv3x3x3(ndhwc(skip, st), conv3d.pack_weight(w2, st), bias, up=ndhwc(up, st), out=out2, dtype="bf16",
                         config=cfg)
        assert rel_err(ncdhw(out2), expected2) <= _tol("bf16"), cfg
        for pool in ((1, 2, 2), (2, 2, 2)) if cfg.kwargs["RD"] == 2 else ((1, 2, 2),):
            pooled = nan((1, 12 // pool[0], 14, 16, 64), st).cuda()
            conv3d.conv3x3x3(ndhwc(skip, st), conv3d.pack_weight(w1, st), bias, pool=pool, out=out, pooled=pooled,
                             dtype="bf16", config=cfg)
            assert rel_err(ncdhw(out), expected1) <= _tol("bf16"), cfg
            torch.testing.assert_close(ncdhw(pooled), F.max_pool3d(ncdhw(out), pool), rtol=0, atol=0)
