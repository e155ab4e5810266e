"""Each Triton kernel against the PyTorch op it replaces (interpreter on CPU, tiny shapes)."""

import pytest
import torch
import torch.nn.functional as F
import triton
import triton.language as tl
from reference import STORAGE, TOL, nchw, nhwc, poisoned, rel_err

from fastunet.kernels import conv, head, rowrun, upconv
from fastunet.kernels._utils import to_storage, upcast_for_interpreter
from fastunet.model import center_crop

DTYPES = ["fp32", "tf32", "fp16", "bf16"]


def _q(t, dtype):
    """The operand as the kernel sees it: rounded to the storage dtype, computed in fp32."""
    return t.to(STORAGE[dtype]).float()


def _check(actual, expected, dtype):
    assert not torch.isnan(actual.float()).any(), "an output element was not written"
    assert rel_err(actual, expected) <= TOL[dtype][0], rel_err(actual, expected)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "n, c_in, c_out, h, w, relu, pool",
    [
        (2, 5, 12, 21, 19, True, True),  # odd sizes, 2x2 tiles, channels not multiples of 16
        (1, 20, 3, 9, 24, False, False),  # two channel blocks in K, no ReLU
        (3, 1, 20, 8, 7, True, False),  # first layer: one input channel; two output blocks
        (2, 20, 12, 14, 19, True, True),  # the K loop (two channel blocks a tap) with pooling
        (1, 3, 17, 11, 10, True, True),  # RGB: K = 27 packed into one dot, with pooling
        (1, 7, 5, 6, 9, True, False),  # the widest packed K: 9 * 7 = 63 of 64
        (1, 8, 5, 6, 9, False, False),  # 9 * 8 = 72: back to the K loop
    ],
)
def test_conv3x3_against_conv2d(dtype, n, c_in, c_out, h, w, relu, pool):
    x = torch.randn(n, c_in, h, w)
    weight = torch.randn(c_out, c_in, 3, 3) * (2 / (9 * c_in)) ** 0.5
    bias = torch.randn(c_out)
    st = STORAGE[dtype]
    out = poisoned((n, h - 2, w - 2, c_out), st)
    pooled = poisoned((n, (h - 2) // 2, (w - 2) // 2, c_out), st) if pool else None
    conv.conv3x3(nhwc(x, st), conv.pack_weight(weight, st), bias, relu=relu, pool=pool, out=out, pooled=pooled, dtype=dtype)
    expected = F.conv2d(_q(x, dtype), _q(weight, dtype), bias)
    if relu:
        expected = torch.relu(expected)
    _check(nchw(out), expected, dtype)
    if pool:
        _check(nchw(pooled), F.max_pool2d(_q(expected, dtype), 2), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_conv3x3_two_sources_is_crop_concat(dtype):
    """Decoder conv: cat([center_crop(skip), up]) read from two tensors, never materialized."""
    n, c_skip, c_up, c_out = 2, 5, 12, 7
    skip = torch.randn(n, c_skip, 27, 25)
    up = torch.randn(n, c_up, 19, 13)  # crop offsets (4, 6)
    weight = torch.randn(c_out, c_skip + c_up, 3, 3) * 0.2
    bias = torch.randn(c_out)
    st = STORAGE[dtype]
    out = poisoned((n, 17, 11, c_out), st)
    conv.conv3x3(nhwc(skip, st), conv.pack_weight(weight, st), bias, up=nhwc(up, st), out=out, dtype=dtype)
    cat = torch.cat([center_crop(skip, 19, 13), up], dim=1)
    _check(nchw(out), torch.relu(F.conv2d(_q(cat, dtype), _q(weight, dtype), bias)), dtype)


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
@pytest.mark.parametrize("c_skip, c_up", [(20, 16), (3, 33)])
def test_conv3x3_two_sources_channel_blocks(dtype, c_skip, c_up):
    """Each source's loop walks its own channel blocks (a partial last block in either one)."""
    n, c_out = 1, 9
    skip = torch.randn(n, c_skip, 15, 16)
    up = torch.randn(n, c_up, 9, 12)
    weight = torch.randn(c_out, c_skip + c_up, 3, 3) * 0.1
    bias = torch.randn(c_out)
    st = STORAGE[dtype]
    out = poisoned((n, 7, 10, c_out), st)
    conv.conv3x3(nhwc(skip, st), conv.pack_weight(weight, st), bias, up=nhwc(up, st), out=out, dtype=dtype)
    cat = torch.cat([center_crop(skip, 9, 12), up], dim=1)
    _check(nchw(out), torch.relu(F.conv2d(_q(cat, dtype), _q(weight, dtype), bias)), dtype)


def test_packed_k_is_chosen_for_small_channel_counts():
    assert [conv.packed_k(c) for c in (1, 2, 3, 4, 7, 8, 64)] == [16, 32, 32, 64, 64, 0, 0]
    assert conv.packed_k(3, 3) == 0  # two sources: the K loop


def test_every_conv_config_on_the_interpreter():
    """Each GPU config (block shapes, K steps larger than the channels) on a tiny two-source
    conv with pooling, fp32, under the interpreter."""
    skip, up = torch.randn(1, 20, 14, 13), torch.randn(1, 12, 10, 11)
    weight, bias = torch.randn(7, 32, 3, 3) * 0.1, torch.randn(7)
    cat = torch.cat([center_crop(skip, 10, 11), up], dim=1)
    expected = torch.relu(F.conv2d(cat, weight, bias))
    for cfg in conv.get_autotune_config():
        assert cfg.num_warps <= conv.MAX_WARPS  # the flattened loop's known miscompile is at 8 warps
        out, pooled = poisoned((1, 8, 9, 7), torch.float32), poisoned((1, 4, 4, 7), torch.float32)
        conv.conv3x3(nhwc(skip, torch.float32), conv.pack_weight(weight, torch.float32), bias, up=nhwc(up, torch.float32),
                     pool=True, out=out, pooled=pooled, config=cfg)
        _check(nchw(out), expected, "fp32")
        _check(nchw(pooled), F.max_pool2d(expected, 2), "fp32")


def test_conv3x3_pool_only_and_strided_skip_view():
    """write_full=False writes only the pooled output; a sliced (non-contiguous) input works."""
    x_big = torch.randn(2, 14, 15, 6)
    x = x_big[:, 1:13, 2:14]  # NHWC view with unit channel stride
    weight = torch.randn(4, 6, 3, 3)
    bias = torch.randn(4)
    pooled = poisoned((2, 5, 5, 4), torch.float32)
    out, p = conv.conv3x3(x, conv.pack_weight(weight, torch.float32), bias, pool=True, write_full=False, pooled=pooled)
    assert out is None
    expected = F.max_pool2d(torch.relu(F.conv2d(nchw(x), weight, bias)), 2)
    _check(nchw(p), expected, "fp32")


def test_conv3x3_rejects_bad_arguments():
    x = torch.randn(1, 8, 8, 3)
    w = conv.pack_weight(torch.randn(4, 3, 3, 3), torch.float32)
    b = torch.zeros(4)
    with pytest.raises(ValueError, match="packed weight"):
        conv.conv3x3(x, torch.randn(4, 3, 3, 3), b)
    with pytest.raises(ValueError, match="float16"):
        conv.conv3x3(x, w, b, dtype="fp16")
    with pytest.raises(ValueError, match="contiguous channels"):
        conv.conv3x3(torch.randn(1, 3, 8, 8).permute(0, 2, 3, 1).contiguous().transpose(2, 3), w, b)
    with pytest.raises(ValueError, match="center-crop"):
        conv.conv3x3(x, conv.pack_weight(torch.randn(4, 5, 3, 3), torch.float32), b, up=torch.randn(1, 7, 7, 2))
    with pytest.raises(ValueError, match="dtype path"):
        conv.conv3x3(x, w, b, dtype="int8")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n, c_in, c_out, h, w", [(2, 20, 6, 5, 7), (1, 3, 17, 9, 4)])
def test_upconv2x2_against_conv_transpose2d(dtype, n, c_in, c_out, h, w):
    x = torch.randn(n, c_in, h, w)
    weight = torch.randn(c_in, c_out, 2, 2) * (2 / (4 * c_in)) ** 0.5
    bias = torch.randn(c_out)
    st = STORAGE[dtype]
    out = poisoned((n, 2 * h, 2 * w, c_out), st)
    upconv.upconv2x2(nhwc(x, st), upconv.pack_weight(weight, st), bias, out=out, dtype=dtype)
    _check(nchw(out), F.conv_transpose2d(_q(x, dtype), _q(weight, dtype), bias, stride=2), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n, c_in, k, h, w", [(2, 20, 3, 5, 7), (1, 6, 2, 17, 16), (2, 4, 17, 3, 5)])
def test_head_against_conv1x1_softmax_argmax(dtype, n, c_in, k, h, w):
    x = torch.randn(n, c_in, h, w)
    weight = torch.randn(k, c_in, 1, 1)
    bias = torch.randn(k)
    st = STORAGE[dtype]
    logits = poisoned((n, k, h, w), torch.float32)
    probs = poisoned((n, k, h, w), torch.float16)
    labels = poisoned((n, h, w), torch.uint8)
    head.head(nhwc(x, st), head.pack_weight(weight, st), bias, logits=logits, probs=probs, labels=labels, dtype=dtype)
    expected = F.conv2d(_q(x, dtype), _q(weight, dtype), bias)
    _check(logits, expected, dtype)
    torch.testing.assert_close(probs.float(), expected.softmax(1), atol=2e-3, rtol=2e-3)
    assert torch.equal(labels.long(), expected.argmax(1))


def test_head_probs_only_fp32_and_labels_only():
    x = torch.randn(2, 8, 6, 5)
    weight, bias = torch.randn(3, 8, 1, 1), torch.randn(3)
    probs = poisoned((2, 3, 6, 5), torch.float32)
    head.head(nhwc(x, torch.float32), head.pack_weight(weight, torch.float32), bias, probs=probs)
    expected = F.conv2d(x, weight, bias)
    torch.testing.assert_close(probs, expected.softmax(1), atol=1e-6, rtol=1e-5)
    labels = poisoned((2, 6, 5), torch.uint8)
    head.head(nhwc(x, torch.float32), head.pack_weight(weight, torch.float32), bias, labels=labels)
    assert torch.equal(labels.long(), expected.argmax(1))
    with pytest.raises(ValueError, match="Nothing to write"):
        head.head(nhwc(x, torch.float32), head.pack_weight(weight, torch.float32), bias)


@pytest.mark.parametrize("module", [conv, upconv, head])
def test_forcing_a_config_runs_that_config(module):
    """The `config=` path used by the GPU tests (here with a small interpreter-sized config)."""
    x = torch.randn(2, 6, 9, 11)
    if module is conv:
        cfg = triton.Config(dict(BLOCK_H=4, BLOCK_W=8, BLOCK_N=16, BLOCK_K=16), num_warps=4, num_stages=1)
        w, b = torch.randn(5, 6, 3, 3), torch.randn(5)
        out, _ = conv.conv3x3(nhwc(x, torch.float32), conv.pack_weight(w, torch.float32), b, config=cfg,
                              out=poisoned((2, 7, 9, 5), torch.float32))
        _check(nchw(out), torch.relu(F.conv2d(x, w, b)), "fp32")
    elif module is upconv:
        cfg = triton.Config(dict(BLOCK_M=32, BLOCK_N=16, BLOCK_K=16), num_warps=4, num_stages=1)
        w, b = torch.randn(6, 5, 2, 2), torch.randn(5)
        out = upconv.upconv2x2(nhwc(x, torch.float32), upconv.pack_weight(w, torch.float32), b, config=cfg,
                               out=poisoned((2, 18, 22, 5), torch.float32))
        _check(nchw(out), F.conv_transpose2d(x, w, b, stride=2), "fp32")
    else:
        cfg = triton.Config(dict(BLOCK_M=32, BLOCK_K=16), num_warps=4, num_stages=1)
        w, b = torch.randn(3, 6, 1, 1), torch.randn(3)
        logits = poisoned((2, 3, 9, 11), torch.float32)
        head.head(nhwc(x, torch.float32), head.pack_weight(w, torch.float32), b, logits=logits, config=cfg)
        _check(logits, F.conv2d(x, w, b), "fp32")


# -- the row-run (TMA) main loop: 16-bit storage, channels multiples of 8 ---------------------
def _rowrun(r, bw, bn, bk):
    return triton.Config(dict(R=r, RD=1, BW=bw, BN=bn, BK=bk), num_warps=4, num_stages=1,
                         pre_hook=rowrun.set_block_shapes)


@pytest.mark.parametrize(
    "dtype, n, c_in, c_out, h, w, relu, pool, cfg",
    [
        ("bf16", 2, 16, 24, 13, 15, True, True, _rowrun(2, 16, 16, 16)),  # odd sizes, two channel tiles, pool
        ("fp16", 1, 24, 16, 12, 21, False, False, _rowrun(4, 16, 16, 16)),  # a partial channel block in K, no ReLU
        ("bf16", 2, 8, 8, 9, 10, True, False, _rowrun(1, 32, 16, 16)),  # a flat tile across rows and images
        ("fp16", 1, 16, 16, 14, 11, True, True, _rowrun(4, 16, 16, 16)),  # four rows, two pooled rows a tile
        ("bf16", 1, 16, 8, 10, 9, True, True, None),  # the interpreter's default row-run tile
    ],
)
def test_rowrun_conv_against_conv2d(dtype, n, c_in, c_out, h, w, relu, pool, cfg):
    """The TMA row-run loop (descriptor boxes, runs shared by the taps kh) against F.conv2d."""
    x = torch.randn(n, c_in, h, w)
    weight = torch.randn(c_out, c_in, 3, 3) * (2 / (9 * c_in)) ** 0.5
    bias = torch.randn(c_out)
    st = STORAGE[dtype]
    xs, ws = nhwc(x, st), conv.pack_weight(weight, st)
    shape = conv.conv_shape(xs, None, c_out, pool=pool)
    assert conv.uses_rowrun(shape, st, ws, xs, None, cfg)
    out = poisoned((n, h - 2, w - 2, c_out), st)
    pooled = poisoned((n, (h - 2) // 2, (w - 2) // 2, c_out), st) if pool else None
    conv.conv3x3(xs, ws, bias, relu=relu, pool=pool, out=out, pooled=pooled, dtype=dtype, config=cfg)
    expected = F.conv2d(_q(x, dtype), _q(weight, dtype), bias)
    expected = torch.relu(expected) if relu else expected
    _check(nchw(out), expected, dtype)
    if pool:
        _check(nchw(pooled), F.max_pool2d(_q(expected, dtype), 2), dtype)


@pytest.mark.parametrize("dtype, r", [("bf16", 2), ("fp16", 4)])
def test_rowrun_two_sources_is_crop_concat(dtype, r):
    """Decoder conv on the row-run loop: the cropped skip and the up-conv output, one loop each."""
    n, c_skip, c_up, c_out = 2, 16, 8, 16
    skip, up = torch.randn(n, c_skip, 15, 17), torch.randn(n, c_up, 9, 11)  # crop offsets (3, 3)
    weight, bias = torch.randn(c_out, c_skip + c_up, 3, 3) * 0.2, torch.randn(c_out)
    st = STORAGE[dtype]
    out = poisoned((n, 7, 9, c_out), st)
    conv.conv3x3(nhwc(skip, st), conv.pack_weight(weight, st), bias, up=nhwc(up, st), out=out, dtype=dtype,
                 config=_rowrun(r, 16, 16, 16))
    cat = torch.cat([center_crop(skip, 9, 11), up], dim=1)
    _check(nchw(out), torch.relu(F.conv2d(_q(cat, dtype), _q(weight, dtype), bias)), dtype)


def test_rowrun_pool_only():
    x, weight, bias = torch.randn(1, 16, 12, 14), torch.randn(8, 16, 3, 3) * 0.2, torch.randn(8)
    pooled = poisoned((1, 5, 6, 8), torch.bfloat16)
    out, p = conv.conv3x3(nhwc(x, torch.bfloat16), conv.pack_weight(weight, torch.bfloat16), bias, pool=True,
                          write_full=False, pooled=pooled, dtype="bf16", config=_rowrun(2, 16, 16, 16))
    assert out is None
    expected = torch.relu(F.conv2d(_q(x, "bf16"), _q(weight, "bf16"), bias))
    _check(nchw(p), F.max_pool2d(_q(expected, "bf16"), 2), "bf16")


def test_rowrun_is_chosen_only_where_tma_can_read_the_tensors():
    bf = torch.bfloat16
    w16 = conv.pack_weight(torch.randn(16, 16, 3, 3), bf)

    def chosen(x, weight=w16, up=None, st=bf, pool=False):
        return conv.uses_rowrun(conv.conv_shape(x, up, weight.shape[1], pool=pool,
                                                packed=conv.packed_k(x.shape[3], 0 if up is None else up.shape[3])),
                                st, weight, x, up)

    assert chosen(torch.zeros(1, 8, 8, 16, dtype=bf))
    assert not chosen(torch.zeros(1, 8, 8, 20, dtype=bf), conv.pack_weight(torch.randn(16, 20, 3, 3), bf))  # C % 8
    assert not chosen(torch.zeros(1, 8, 8, 16), conv.pack_weight(torch.randn(16, 16, 3, 3), torch.float32),
                      st=torch.float32)  # 4-byte storage: the pointer loop
    assert not chosen(torch.zeros(1, 8, 8, 3, dtype=bf), conv.pack_weight(torch.randn(16, 3, 3, 3), bf))  # packed K
    assert not chosen(torch.zeros(1, 8, 10, 16, dtype=bf)[:, :, 1:9])  # rows not dense: stride_h != W * stride_w
    assert chosen(torch.zeros(1, 8, 8, 32, dtype=bf)[..., :16])  # a channel slice: dense pixels, 64-byte rows
    with pytest.raises(ValueError, match="row-run config was forced"):
        conv.conv3x3(torch.zeros(1, 8, 8, 20), conv.pack_weight(torch.randn(16, 20, 3, 3), torch.float32),
                     torch.zeros(16), config=_rowrun(2, 16, 16, 16))


def test_rowrun_configs_fit_shared_memory_registers_and_the_model_ranks_them():
    """Every row-run config fits 227 KiB and holds at most 128 fp32 accumulators a thread; the
    model ranks for a layer only configs that can run it (no flat tile with a pool or two sources)."""
    for c in conv.get_rowrun_config():
        kw = c.kwargs
        boxes = (kw["BW"] + kw["BN"]) if kw["R"] == 1 else ((kw["R"] + 2) * kw["BW"] + 3 * kw["BN"])
        assert c.num_stages * boxes * kw["BK"] * 2 + 1024 <= 232448, c
        assert kw["R"] * kw["BW"] * kw["BN"] // (32 * c.num_warps) <= 128, c
        assert kw["R"] in (1, 2, 4) and kw["BW"] >= 64 and c.pre_hook is rowrun.set_block_shapes
    pool = conv.ConvShape(4, 570, 570, 64, 0, 64, pool=True)
    two = conv.ConvShape(4, 392, 392, 64, 64, 64)
    assert all(c.kwargs["R"] > 1 for c in conv.rowrun_configs_for(pool) + conv.rowrun_configs_for(two))
    ranked = conv.rowrun_configs_for(conv.ConvShape(4, 140, 140, 128, 0, 256))
    times = [conv.predict(c, conv.ConvShape(4, 140, 140, 128, 0, 256))["seconds"] for c in ranked]
    assert times == sorted(times) and any(c.num_warps == 8 for c in ranked[:3])


# -- GPU: real shapes, the real bf16 dot, every autotune config ------------------------------
GPU_LAYERS = [  # (n, c_a, c_b, c_out, size, skip, pool): shapes of the paper network
    (2, 1, 0, 64, 572, 0, False),
    (2, 64, 0, 64, 570, 0, True),
    (4, 256, 0, 512, 68, 0, True),
    (2, 128, 128, 128, 200, 280, False),
    (8, 512, 0, 1024, 30, 0, False),
]


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n, c_a, c_b, c_out, size, skip, pool", GPU_LAYERS)
def test_conv3x3_real_shapes_gpu(dtype, n, c_a, c_b, c_out, size, skip, pool):
    st = STORAGE[dtype]
    a = torch.randn(n, c_a, skip or size, skip or size, device="cuda")
    b = torch.randn(n, c_b, size, size, device="cuda") if c_b else None
    weight = torch.randn(c_out, c_a + c_b, 3, 3, device="cuda") * (2 / (9 * (c_a + c_b))) ** 0.5
    bias = torch.randn(c_out, device="cuda")
    out = poisoned((n, size - 2, size - 2, c_out), st, "cuda")
    pooled = poisoned((n, (size - 2) // 2, (size - 2) // 2, c_out), st, "cuda") if pool else None
    conv.conv3x3(nhwc(a, st), conv.pack_weight(weight, st), bias, up=None if b is None else nhwc(b, st),
                 pool=pool, out=out, pooled=pooled, dtype=dtype)
    x = a if b is None else torch.cat([center_crop(a, size, size), b], 1)
    expected = torch.relu(F.conv2d(_q(x, dtype), _q(weight, dtype), bias))
    _check(nchw(out), expected, dtype)
    if pool:
        _check(nchw(pooled), F.max_pool2d(_q(expected, dtype), 2), dtype)


GPU_UPCONVS = [(8, 1024, 512, 28), (2, 512, 256, 100), (4, 256, 128, 100), (1, 128, 64, 392)]  # (n, c_in, c_out, size)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n, c_in, c_out, size", GPU_UPCONVS)
def test_upconv_real_shapes_gpu(dtype, n, c_in, c_out, size):
    st = STORAGE[dtype]
    x = torch.randn(n, c_in, size, size, device="cuda")
    w, b = torch.randn(c_in, c_out, 2, 2, device="cuda") * (2 / c_in) ** 0.5, torch.randn(c_out, device="cuda")
    out = poisoned((n, 2 * size, 2 * size, c_out), st, "cuda")
    upconv.upconv2x2(nhwc(x, st), upconv.pack_weight(w, st), b, out=out, dtype=dtype)
    _check(nchw(out), F.conv_transpose2d(_q(x, dtype), _q(w, dtype), b, stride=2), dtype)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n, k, size", [(8, 2, 388), (2, 2, 868), (2, 5, 388)])
def test_head_real_shapes_gpu(dtype, n, k, size):
    """Scores, probabilities and labels together (the "both" output) at the paper's sizes."""
    st = STORAGE[dtype]
    x = torch.randn(n, 64, size, size, device="cuda")
    w, b = torch.randn(k, 64, 1, 1, device="cuda") * (2 / 64) ** 0.5, torch.randn(k, device="cuda")
    expected = F.conv2d(_q(x, dtype), _q(w, dtype), b)
    logits = poisoned((n, k, size, size), torch.float32, "cuda")
    probs = poisoned((n, k, size, size), torch.float16, "cuda")
    labels = poisoned((n, size, size), torch.uint8, "cuda")
    head.head(nhwc(x, st), head.pack_weight(w, st), b, logits=logits, probs=probs, labels=labels, dtype=dtype)
    _check(logits, expected, dtype)
    torch.testing.assert_close(probs.float(), logits.softmax(1), atol=2e-3, rtol=1e-2)
    assert torch.equal(labels.long(), logits.argmax(1))  # the head's argmax of its own scores


@pytest.mark.gpu
@pytest.mark.timeout(600)  # the first call compiles each kernel variant of this dtype path
@pytest.mark.parametrize("dtype", DTYPES)
def test_every_autotune_config_passes_gpu(dtype):
    """Each config the autotuner may pick for this dtype against the reference (a flattened
    tap loop once miscompiled at num_warps=8)."""
    st = STORAGE[dtype]
    precision = "ieee" if dtype == "fp32" else "tf32"
    skip = torch.randn(2, 64, 140, 140, device="cuda")
    up = torch.randn(2, 64, 100, 100, device="cuda")
    weight = torch.randn(64, 128, 3, 3, device="cuda") * (2 / (9 * 128)) ** 0.5
    bias = torch.randn(64, device="cuda")
    expected = torch.relu(F.conv2d(_q(torch.cat([center_crop(skip, 100, 100), up], 1), dtype), _q(weight, dtype), bias))
    configs = conv.configs_for(st, precision, pool=True)
    assert configs, "every conv config was pruned"
    for cfg in configs:
        out = poisoned((2, 98, 98, 64), st, "cuda")
        pooled = poisoned((2, 49, 49, 64), st, "cuda")
        conv.conv3x3(nhwc(skip, st), conv.pack_weight(weight, st), bias, up=nhwc(up, st), pool=True,
                     out=out, pooled=pooled, dtype=dtype, config=cfg)
        _check(nchw(out), expected, dtype)
        _check(nchw(pooled), F.max_pool2d(_q(expected, dtype), 2), dtype)
    x = torch.randn(2, 128, 50, 50, device="cuda")
    wu, bu = torch.randn(128, 64, 2, 2, device="cuda") * 0.1, torch.randn(64, device="cuda")
    for cfg in upconv.configs_for(st, precision=precision):
        out = poisoned((2, 100, 100, 64), st, "cuda")
        upconv.upconv2x2(nhwc(x, st), upconv.pack_weight(wu, st), bu, out=out, dtype=dtype, config=cfg)
        _check(nchw(out), F.conv_transpose2d(_q(x, dtype), _q(wu, dtype), bu, stride=2), dtype)
    feats = torch.randn(2, 64, 96, 96, device="cuda")
    wh, bh = torch.randn(2, 64, 1, 1, device="cuda"), torch.randn(2, device="cuda")
    for cfg in head.get_autotune_config():
        logits = poisoned((2, 2, 96, 96), torch.float32, "cuda")
        head.head(nhwc(feats, st), head.pack_weight(wh, st), bh, logits=logits, dtype=dtype, config=cfg)
        _check(logits, F.conv2d(_q(feats, dtype), _q(wh, dtype), bh), dtype)


@pytest.mark.gpu
@pytest.mark.timeout(600)
@pytest.mark.xfail(reason="probe: the flattened conv loop was reported to miscompile at 8 warps "
                          "(triton-lang/triton#1254, pytorch/pytorch#173068); the kept configs use 4", strict=False)
def test_flattened_conv_loop_at_8_warps_gpu():
    """Not a kept config: an XPASS on the GPU's triton is the evidence wanted before 8-warp
    tiles (256 x 128, two warp groups) join conv.get_autotune_config()."""
    g = torch.Generator(device="cuda").manual_seed(8)
    skip = torch.randn(2, 64, 140, 140, device="cuda", generator=g)
    up = torch.randn(2, 64, 100, 100, device="cuda", generator=g)
    weight = torch.randn(128, 128, 3, 3, device="cuda", generator=g) * (2 / (9 * 128)) ** 0.5
    bias = torch.randn(128, device="cuda", generator=g)
    expected = torch.relu(F.conv2d(_q(torch.cat([center_crop(skip, 100, 100), up], 1), "bf16"), _q(weight, "bf16"), bias))
    for cfg in [triton.Config(dict(BLOCK_H=16, BLOCK_W=16, BLOCK_N=128, BLOCK_K=64), num_warps=8, num_stages=3),
                triton.Config(dict(BLOCK_H=8, BLOCK_W=32, BLOCK_N=128, BLOCK_K=32), num_warps=8, num_stages=4)]:
        out = poisoned((2, 98, 98, 128), torch.bfloat16, "cuda")
        pooled = poisoned((2, 49, 49, 128), torch.bfloat16, "cuda")
        conv.conv3x3(nhwc(skip, torch.bfloat16), conv.pack_weight(weight, torch.bfloat16), bias,
                     up=nhwc(up, torch.bfloat16), pool=True, out=out, pooled=pooled, dtype="bf16", config=cfg)
        _check(nchw(out), expected, "bf16")
        _check(nchw(pooled), F.max_pool2d(_q(expected, "bf16"), 2), "bf16")


@pytest.mark.gpu
@pytest.mark.timeout(600)
def test_every_rowrun_config_gpu():
    """Every row-run config (8 warps included: the loop form the 8-warp miscompile reports
    warned about) against the reference: a 2-source decoder conv, an encoder conv with the
    pool, and a single-source conv for the flat tiles, bf16, sizes that leave partial tiles."""
    g = torch.Generator(device="cuda").manual_seed(19)
    st = torch.bfloat16
    skip = torch.randn(2, 64, 150, 150, device="cuda", generator=g)
    up = torch.randn(2, 64, 102, 102, device="cuda", generator=g)
    w2 = torch.randn(128, 128, 3, 3, device="cuda", generator=g) * (2 / (9 * 128)) ** 0.5
    w1 = torch.randn(128, 64, 3, 3, device="cuda", generator=g) * (2 / (9 * 64)) ** 0.5
    bias = torch.randn(128, device="cuda", generator=g)
    cat = torch.cat([center_crop(skip, 102, 102), up], 1)
    expected2 = torch.relu(F.conv2d(_q(cat, "bf16"), _q(w2, "bf16"), bias))
    expected1 = torch.relu(F.conv2d(_q(skip, "bf16"), _q(w1, "bf16"), bias))
    for cfg in conv.get_rowrun_config():
        if cfg.kwargs["R"] == 1:
            out = poisoned((2, 148, 148, 128), st, "cuda")
            conv.conv3x3(nhwc(skip, st), conv.pack_weight(w1, st), bias, out=out, dtype="bf16", config=cfg)
            _check(nchw(out), expected1, "bf16")
            continue
        out = poisoned((2, 100, 100, 128), st, "cuda")
        conv.conv3x3(nhwc(skip, st), conv.pack_weight(w2, st), bias, up=nhwc(up, st), out=out, dtype="bf16",
                     config=cfg)
        _check(nchw(out), expected2, "bf16")
        out, pooled = poisoned((2, 148, 148, 128), st, "cuda"), poisoned((2, 74, 74, 128), st, "cuda")
        conv.conv3x3(nhwc(skip, st), conv.pack_weight(w1, st), bias, pool=True, out=out, pooled=pooled,
                     dtype="bf16", config=cfg)
        _check(nchw(out), expected1, "bf16")
        _check(nchw(pooled), F.max_pool2d(_q(expected1, "bf16"), 2), "bf16")


@triton.jit
def _cast_kernel(x_ptr, y_ptr, FIX: tl.constexpr, N: tl.constexpr):
    offs = tl.arange(0, N)
    tl.store(y_ptr + offs, to_storage(tl.load(x_ptr + offs), y_ptr.dtype.element_ty, FIX))


# 1e38 and 3.3e38 overflow fp16 on purpose (they must become inf, as in torch); numpy, which
# runs the interpreter's cast, warns about that.
@pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning")
def test_to_storage_rounds_to_nearest_even_like_torch():
    """The interpreter's bf16 cast truncates; to_storage rounds like the GPU (and torch)."""
    # Ties round to even; zeros keep their sign. (fp32 subnormals are left out: the
    # interpreter's own cast mangles them after rounding; the GPU's cast does not.)
    special = torch.tensor([0.0, -0.0, 1e38, 3.3e38, 1.0 + 2**-8, 1.0 + 3 * 2**-8, -(1.0 + 2**-8), 2.0**-120])
    x = torch.cat([torch.randn(4096 - special.numel()) * 100, special])
    for dtype in (torch.bfloat16, torch.float16, torch.float32):
        y = torch.empty(x.numel(), dtype=dtype)
        _cast_kernel[(1,)](x, y, FIX=upcast_for_interpreter(torch.bfloat16), N=x.numel())
        assert torch.equal(y.view(torch.int16 if dtype != torch.float32 else torch.int32),
                           x.to(dtype).view(torch.int16 if dtype != torch.float32 else torch.int32)), dtype


def test_autotune_configs_are_pruned_to_the_shared_memory_per_dtype():
    """Hopper gives a block 232448 bytes: the fp32 256 x 64 x 64 (3 stages, 240 KiB) conv
    tile cannot launch there; its bf16 twin fits. (v1 also listed 256 x 128 x 64 at 8 warps;
    the v2 configs keep at most 4 warps, where that accumulator alone would fill the registers.)"""
    hopper = 232448
    every = conv.get_autotune_config()
    bf16 = conv.configs_for(torch.bfloat16, shared_memory=hopper)
    tf32 = conv.configs_for(torch.float32, "tf32", shared_memory=hopper)
    ieee = conv.configs_for(torch.float32, "ieee", shared_memory=hopper)
    assert len(bf16) == len(every)
    big = {(16, 16, 64, 64)}
    shape = lambda c: tuple(c.kwargs[k] for k in ("BLOCK_H", "BLOCK_W", "BLOCK_N", "BLOCK_K"))  # noqa: E731
    assert {shape(c) for c in every} - {shape(c) for c in tf32} == big
    assert ieee and all(c.kwargs["BLOCK_H"] * c.kwargs["BLOCK_W"] * c.kwargs["BLOCK_N"] * c.kwargs["BLOCK_K"]
                        <= 128 * 64 * 32 for c in ieee)
    for configs, elem in ((tf32, 4), (bf16, 2)):
        for c in configs:
            m = c.kwargs["BLOCK_H"] * c.kwargs["BLOCK_W"]
            assert (m + c.kwargs["BLOCK_N"]) * c.kwargs["BLOCK_K"] * elem * c.num_stages <= hopper
    assert len(upconv.configs_for(torch.float32, shared_memory=hopper)) == len(upconv.get_autotune_config())
    # nothing fits: the smallest config is kept rather than none
    assert len(conv.configs_for(torch.float32, shared_memory=1)) == 1


def test_launchers_refuse_strided_weights():
    x = nhwc(torch.randn(1, 4, 6, 6), torch.float32)
    w = conv.pack_weight(torch.randn(3, 4, 3, 3), torch.float32)
    with pytest.raises(ValueError, match="contiguous weight"):
        conv.conv3x3(x, w.t().contiguous().t(), torch.zeros(3))
    with pytest.raises(ValueError, match="contiguous bias"):
        conv.conv3x3(x, w, torch.zeros(6)[::2])
    with pytest.raises(ValueError, match="contiguous weight"):
        upconv.upconv2x2(x, upconv.pack_weight(torch.randn(4, 2, 2, 2), torch.float32).t().contiguous().t(), torch.zeros(2))
    with pytest.raises(ValueError, match="contiguous weight"):
        head.head(x, head.pack_weight(torch.randn(2, 4, 1, 1), torch.float32).t().contiguous().t(), torch.zeros(2),
                  labels=torch.empty(1, 6, 6, dtype=torch.uint8))


def test_tuning_configs_interpreter_single_and_full(monkeypatch):
    from fastunet.kernels import _utils

    every, small = conv.get_autotune_config(), triton.Config(dict(BLOCK_H=2), num_warps=1)
    monkeypatch.setattr(_utils, "INTERPRET", True)
    assert _utils.tuning_configs(every, small) == [small]
    monkeypatch.setattr(_utils, "INTERPRET", False)
    monkeypatch.setattr(_utils, "AUTOTUNE", True)
    assert _utils.tuning_configs(every, small) == every
    assert _utils.select(every) == every
    monkeypatch.setattr(_utils, "AUTOTUNE", False)  # FASTUNET_AUTOTUNE=0
    assert _utils.tuning_configs(every, small) == every[:1]
    assert _utils.tuning_configs(every, small, pruned=True) == every  # the prune function picks
    assert _utils.select(every) == every[:1]
    macs = lambda c: c.kwargs["BLOCK_H"] * c.kwargs["BLOCK_W"] * c.kwargs["BLOCK_N"] * c.kwargs["BLOCK_K"]  # noqa: E731
    [quick] = _utils.select(every, key=macs)
    assert macs(quick) == min(macs(c) for c in every)
    # the first config, kept for the 16-bit and tf32 paths, fits Hopper's shared memory there
    key = lambda c: (sorted(c.kwargs.items()), c.num_warps, c.num_stages)  # noqa: E731
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        assert key(every[0]) in [key(c) for c in conv.configs_for(dtype, "tf32", shared_memory=232448)]
    first_up = upconv.get_autotune_config()[0]
    assert key(first_up) in [key(c) for c in upconv.configs_for(torch.float32, shared_memory=232448)]


def test_interpreter_numpy_combination_is_named():
    """triton 3.6's interpreter with numpy >= 2.4 is refused with a message, not a numpy error."""
    from fastunet.kernels._utils import interpreter_problem

    assert "numpy<2.4" in interpreter_problem("3.6.0", "2.4.6")
    assert interpreter_problem("3.6.0", "2.3.5") is None
    assert interpreter_problem("3.9.0", "2.4.6") is None
    assert interpreter_problem("3.10.0+git1234", "2.5.0") is None


def test_configs_that_spilled_on_sm90_are_pruned():
    """The compile report found spills (ptxas for sm_90a) in: the 256-pixel conv tile with
    pooling in 4-byte storage, fp32 FMA up-conv tiles above 128 x 64 x 32, fp32 FMA conv+head
    tiles above 64 x 64 accumulators. The autotuners keep none of them."""
    from fastunet.kernels import conv_head

    hopper = 232448
    for dtype, precision in ((torch.float32, "tf32"), (torch.float32, "ieee")):
        kept = conv.configs_for(dtype, precision, shared_memory=hopper, pool=True)
        assert kept and all(c.kwargs["BLOCK_H"] * c.kwargs["BLOCK_W"] <= 128 for c in kept)
    assert any(c.kwargs["BLOCK_H"] * c.kwargs["BLOCK_W"] == 256
               for c in conv.configs_for(torch.bfloat16, shared_memory=hopper, pool=True))  # 16-bit: kept
    ieee_up = upconv.configs_for(torch.float32, shared_memory=hopper, precision="ieee")
    assert len(ieee_up) >= 2 and all(c.kwargs["BLOCK_M"] * c.kwargs["BLOCK_N"] * c.kwargs["BLOCK_K"] <= 128 * 64 * 32
                                     for c in ieee_up)
    ieee_head = conv_head.configs_for(torch.float32, 64, "ieee", shared_memory=hopper)
    assert ieee_head and all(c.kwargs["BLOCK_H"] * c.kwargs["BLOCK_W"] * 64 <= 64 * 64 for c in ieee_head)
    assert len(conv_head.configs_for(torch.bfloat16, 64, shared_memory=hopper)) == len(conv_head.get_autotune_config())
