"""The last decoder conv fused with the head (conv3x3_head) against conv2d -> ReLU -> storage
rounding -> 1x1 conv -> softmax/argmax in PyTorch (interpreter on CPU, tiny shapes)."""

import pytest
import torch
import torch.nn.functional as F
import triton
from reference import STORAGE, TOL, nhwc, poisoned, rel_err

from fastunet import ReferenceUNet, UNetConfig
from fastunet.kernels import conv, conv_head, head

DTYPES = ["fp32", "tf32", "fp16", "bf16"]


def _q(t, dtype):
    return t.to(STORAGE[dtype]).float()


def _inputs(n, c_in, c_mid, k, h, w, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c_in, h, w, generator=g)
    wc = torch.randn(c_mid, c_in, 3, 3, generator=g) * (2 / (9 * c_in)) ** 0.5
    bc = torch.randn(c_mid, generator=g) * 0.1
    wh = torch.randn(k, c_mid, 1, 1, generator=g) * (1 / c_mid) ** 0.5
    bh = torch.randn(k, generator=g)
    return x, wc, bc, wh, bh


def _expected(x, wc, bc, wh, bh, dtype, relu=True):
    f = F.conv2d(_q(x, dtype), _q(wc, dtype), bc)
    f = _q(torch.relu(f) if relu else f, dtype)  # stored in the path's dtype by the unfused network
    return F.conv2d(f, _q(wh, dtype), bh)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "n, c_in, c_mid, k, h, w",
    [
        (2, 20, 12, 3, 13, 19),  # K loop, odd sizes, channels not powers of two
        (1, 1, 20, 2, 10, 9),  # one input channel: packed K
        (2, 6, 64, 17, 7, 6),  # the paper's 64 channels; 17 classes (BLOCK_C 32)
    ],
)
def test_conv3x3_head_against_reference(dtype, n, c_in, c_mid, k, h, w):
    x, wc, bc, wh, bh = _inputs(n, c_in, c_mid, k, h, w, seed=n * 1000 + c_in * 10 + k)
    st = STORAGE[dtype]
    logits = poisoned((n, k, h - 2, w - 2), torch.float32)
    probs = poisoned((n, k, h - 2, w - 2), torch.float16)
    labels = poisoned((n, h - 2, w - 2), torch.uint8)
    conv_head.conv3x3_head(nhwc(x, st), conv.pack_weight(wc, st), bc, head.pack_weight(wh, st), bh,
                           logits=logits, probs=probs, labels=labels, dtype=dtype)
    expected = _expected(x, wc, bc, wh, bh, dtype)
    assert not torch.isnan(logits).any() and not torch.isnan(probs.float()).any() and (labels != 255).all()
    assert rel_err(logits, expected) <= TOL[dtype][0], rel_err(logits, expected)
    torch.testing.assert_close(probs.float(), logits.softmax(1), atol=2e-3, rtol=1e-2)
    assert torch.equal(labels.long(), logits.argmax(1))  # the head's argmax of its own scores


def test_conv3x3_head_single_outputs_no_relu_and_nchw_views():
    """Each output alone, without ReLU, written through non-contiguous views."""
    x, wc, bc, wh, bh = _inputs(1, 5, 8, 3, 9, 11, seed=7)
    args = (nhwc(x, torch.float32), conv.pack_weight(wc, torch.float32), bc, head.pack_weight(wh, torch.float32), bh)
    expected = _expected(x, wc, bc, wh, bh, "fp32", relu=False)
    big = poisoned((1, 3, 9, 11), torch.float32)
    logits = big[:, :, 1:8, 1:10]  # a strided view
    conv_head.conv3x3_head(*args, logits=logits, relu=False)
    assert rel_err(logits, expected) <= TOL["fp32"][0]
    assert torch.isnan(big[:, :, 0]).all()  # nothing written outside the view
    probs = poisoned((1, 3, 7, 9), torch.float32)
    conv_head.conv3x3_head(*args, probs=probs, relu=False)
    torch.testing.assert_close(probs, expected.softmax(1), atol=1e-6, rtol=1e-5)
    labels = poisoned((1, 7, 9), torch.uint8)
    conv_head.conv3x3_head(*args, labels=labels, relu=False)
    assert torch.equal(labels.long(), expected.argmax(1))


def test_conv3x3_head_refuses_what_it_cannot_fuse():
    x = nhwc(torch.randn(1, 4, 8, 8), torch.float32)
    w = conv.pack_weight(torch.randn(200, 4, 3, 3), torch.float32)
    wh = head.pack_weight(torch.randn(2, 200, 1, 1), torch.float32)
    labels = torch.empty(1, 6, 6, dtype=torch.uint8)
    with pytest.raises(ValueError, match="conv3x3\\(\\) then head\\(\\)"):
        conv_head.conv3x3_head(x, w, torch.zeros(200), wh, torch.zeros(2), labels=labels)
    w = conv.pack_weight(torch.randn(8, 4, 3, 3), torch.float32)
    wh = head.pack_weight(torch.randn(2, 8, 1, 1), torch.float32)
    with pytest.raises(ValueError, match="Nothing to write"):
        conv_head.conv3x3_head(x, w, torch.zeros(8), wh, torch.zeros(2))
    with pytest.raises(ValueError, match="packed head weight"):
        conv_head.conv3x3_head(x, w, torch.zeros(8), torch.zeros(9, 2), torch.zeros(2), labels=labels)
    assert conv_head.can_fuse(64, 2) and conv_head.can_fuse(128, 64)
    assert not conv_head.can_fuse(129, 2) and not conv_head.can_fuse(64, 65)


def test_every_conv_head_config_on_the_interpreter():
    x, wc, bc, wh, bh = _inputs(1, 6, 20, 3, 12, 19, seed=3)
    expected = _expected(x, wc, bc, wh, bh, "fp32")
    args = (nhwc(x, torch.float32), conv.pack_weight(wc, torch.float32), bc, head.pack_weight(wh, torch.float32), bh)
    for cfg in conv_head.get_autotune_config():
        assert cfg.num_warps <= conv.MAX_WARPS
        logits = poisoned((1, 3, 10, 17), torch.float32)
        conv_head.conv3x3_head(*args, logits=logits, config=cfg)
        assert rel_err(logits, expected) <= TOL["fp32"][0], cfg


def _rowrun(r, bw, bk):
    return triton.Config(dict(R=r, BW=bw, BK=bk), num_warps=4, num_stages=1, pre_hook=conv_head._set_blocks)


@pytest.mark.parametrize("dtype, n, c_in, c_mid, k, h, w, cfg", [
    ("bf16", 2, 16, 24, 3, 11, 13, _rowrun(2, 16, 16)),  # two runs a tile, C_MID padded to 32
    ("fp16", 1, 16, 16, 2, 14, 9, _rowrun(4, 16, 16)),  # four runs
    ("bf16", 2, 8, 16, 2, 9, 10, _rowrun(1, 32, 16)),  # a flat tile across rows and images
])
def test_conv3x3_head_rowrun_against_reference(dtype, n, c_in, c_mid, k, h, w, cfg):
    """The conv + head on the TMA row-run loop: scores, probabilities and labels of every run."""
    x, wc, bc, wh, bh = _inputs(n, c_in, c_mid, k, h, w, seed=c_in + 7 * k)
    st = STORAGE[dtype]
    logits = poisoned((n, k, h - 2, w - 2), torch.float32)
    probs = poisoned((n, k, h - 2, w - 2), torch.float16)
    labels = poisoned((n, h - 2, w - 2), torch.uint8)
    conv_head.conv3x3_head(nhwc(x, st), conv.pack_weight(wc, st), bc, head.pack_weight(wh, st), bh,
                           logits=logits, probs=probs, labels=labels, dtype=dtype, config=cfg)
    expected = _expected(x, wc, bc, wh, bh, dtype)
    assert not torch.isnan(logits).any() and not torch.isnan(probs.float()).any() and (labels != 255).all()
    assert rel_err(logits, expected) <= TOL[dtype][0], rel_err(logits, expected)
    torch.testing.assert_close(probs.float(), logits.softmax(1), atol=2e-3, rtol=1e-2)
    assert torch.equal(labels.long(), logits.argmax(1))


def test_fused_unet_runs_the_head_in_the_last_conv():
    """FusedUNet fuses the head when it can (no full-resolution top-level buffer) and gives
    the same scores and labels as the unfused path."""
    from fastunet.engine.fused import FusedUNet

    torch.manual_seed(11)
    model = ReferenceUNet(UNetConfig(in_channels=1, num_classes=3, base_channels=4, depth=1)).eval()
    x = torch.randn(1, 1, 28, 30)
    fused = FusedUNet(model, device="cpu", dtype="fp32")
    plain = FusedUNet(model, device="cpu", dtype="fp32")
    plain.fuse_head = False  # before the first plan: the separate head kernel
    a, b = fused(x).clone(), plain(x).clone()
    [plan_f], [plan_p] = fused._plans.values(), plain._plans.values()
    assert plan_f.dec_out[-1] is None and plan_p.dec_out[-1] is not None
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(a, model(x).detach(), rtol=1e-5, atol=1e-5)
    assert torch.equal(fused.predict(x, "labels").labels, plain.predict(x, "labels").labels)


# -- GPU ----------------------------------------------------------------------------------------
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n, size, k", [(4, 390, 2), (1, 870, 2), (2, 390, 5)])
def test_conv3x3_head_paper_shapes_gpu(dtype, n, size, k):
    """The paper's last conv (64 -> 64 channels, tiles 572 / 1052) with its head."""
    g = torch.Generator(device="cuda").manual_seed(size + k)
    st = STORAGE[dtype]
    x = torch.randn(n, 64, size, size, device="cuda", generator=g)
    wc = torch.randn(64, 64, 3, 3, device="cuda", generator=g) * (2 / (9 * 64)) ** 0.5
    bc, wh = torch.randn(64, device="cuda", generator=g) * 0.1, torch.randn(k, 64, 1, 1, device="cuda", generator=g) * 0.125
    bh = torch.randn(k, device="cuda", generator=g)
    o = size - 2
    logits = poisoned((n, k, o, o), torch.float32, "cuda")
    probs = poisoned((n, k, o, o), torch.float16, "cuda")
    labels = poisoned((n, o, o), torch.uint8, "cuda")
    conv_head.conv3x3_head(nhwc(x, st), conv.pack_weight(wc, st), bc, head.pack_weight(wh, st), bh,
                           logits=logits, probs=probs, labels=labels, dtype=dtype)
    expected = _expected(x, wc, bc, wh, bh, dtype)
    assert rel_err(logits, expected) <= TOL[dtype][0], rel_err(logits, expected)
    torch.testing.assert_close(probs.float(), logits.softmax(1), atol=2e-3, rtol=1e-2)
    assert torch.equal(labels.long(), logits.argmax(1))


@pytest.mark.gpu
@pytest.mark.timeout(600)
@pytest.mark.parametrize("dtype", DTYPES)
def test_every_conv_head_config_gpu(dtype):
    g = torch.Generator(device="cuda").manual_seed(5)
    st = STORAGE[dtype]
    precision = "ieee" if dtype == "fp32" else "tf32"
    x = torch.randn(2, 64, 100, 100, device="cuda", generator=g)
    wc = torch.randn(64, 64, 3, 3, device="cuda", generator=g) * (2 / (9 * 64)) ** 0.5
    bc, wh = torch.randn(64, device="cuda", generator=g) * 0.1, torch.randn(2, 64, 1, 1, device="cuda", generator=g) * 0.125
    bh = torch.randn(2, device="cuda", generator=g)
    expected = _expected(x, wc, bc, wh, bh, dtype)
    configs = conv_head.configs_for(st, 64, precision)
    assert configs
    for cfg in configs:
        logits = poisoned((2, 2, 98, 98), torch.float32, "cuda")
        conv_head.conv3x3_head(nhwc(x, st), conv.pack_weight(wc, st), bc, head.pack_weight(wh, st), bh,
                               logits=logits, dtype=dtype, config=cfg)
        assert rel_err(logits, expected) <= TOL[dtype][0], (cfg, rel_err(logits, expected))


@pytest.mark.gpu
@pytest.mark.timeout(600)
def test_every_conv_head_rowrun_config_gpu():
    """Every row-run config of the conv + head (8 warps included), bf16, the paper's 64 channels."""
    g = torch.Generator(device="cuda").manual_seed(6)
    x = torch.randn(2, 64, 102, 102, device="cuda", generator=g)
    wc = torch.randn(64, 64, 3, 3, device="cuda", generator=g) * (2 / (9 * 64)) ** 0.5
    bc, wh = torch.randn(64, device="cuda", generator=g) * 0.1, torch.randn(2, 64, 1, 1, device="cuda", generator=g) * 0.125
    bh = torch.randn(2, device="cuda", generator=g)
    expected = _expected(x, wc, bc, wh, bh, "bf16")
    st = torch.bfloat16
    for cfg in conv_head.get_rowrun_config():
        logits = poisoned((2, 2, 100, 100), torch.float32, "cuda")
        conv_head.conv3x3_head(nhwc(x, st), conv.pack_weight(wc, st), bc, head.pack_weight(wh, st), bh,
                               logits=logits, dtype="bf16", config=cfg)
        assert rel_err(logits, expected) <= TOL["bf16"][0], (cfg, rel_err(logits, expected))
