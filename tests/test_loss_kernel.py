"""The fused weighted softmax-CE kernel against F.cross_entropy (interpreter on CPU, tiny shapes).

The reference is F.cross_entropy(reduction='none') times the weight map, summed or divided
by the count of non-ignored pixels, and its autograd gradient, computed in fp32 on the
same dtype-rounded logits the kernel reads.
"""

import pytest
import torch
import torch.nn.functional as F
from reference import rel_err

from fastunet.kernels import loss as lossk
from fastunet.train.loss import _use_triton, weighted_cross_entropy

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
GRAD_TOL = {"fp32": 1e-5, "bf16": 1e-2, "fp16": 1e-2}  # the gradient is stored in the logits' dtype
LOSS_TOL = 1e-5  # fp32 math on the same rounded logits, only the summation order differs


@pytest.fixture(autouse=True)
def _poison_buffers(monkeypatch):
    """Every buffer the kernels write starts as NaN (counts as 2**30), so an element or a
    per-program partial that is not written, or summed when it should not be, shows."""

    def empty_like(t):
        return torch.full_like(t, float("nan"))

    def empty(shape, dtype, device):
        return torch.full(shape, 2**30 if dtype == torch.int32 else float("nan"), dtype=dtype, device=device)

    monkeypatch.setattr(lossk, "_empty_like", empty_like)
    monkeypatch.setattr(lossk, "_empty", empty)


def reference(logits, target, weight, ignore_index, reduction):
    """(loss, grad) of F.cross_entropy(reduction='none') * weight, reduced, in fp32."""
    x = logits.detach().float().requires_grad_()
    nll = F.cross_entropy(x, target.long(), reduction="none", ignore_index=ignore_index)
    if weight is not None:
        nll = nll * weight
    total = nll.sum()
    if reduction == "mean":
        total = total / (target.long() != ignore_index).sum().clamp_min(1)
    total.backward()
    return total.detach(), x.grad


def fused(logits, target, weight, ignore_index=-100, reduction="mean", **kw):
    """(loss, grad) of the kernel through autograd, on a leaf copy of ``logits``."""
    x = logits.detach().clone().requires_grad_()
    loss = lossk.weighted_softmax_ce(x, target, weight, ignore_index=ignore_index, reduction=reduction, **kw)
    loss.backward()
    return loss.detach(), x.grad


def make_inputs(n, c, spatial, dtype, *, weighted=True, ignore_index=-100, target_dtype=torch.int64, device="cpu"):
    """Random logits, labels with 20% ``ignore_index`` where the target dtype can hold it,
    and a weight map."""
    logits = (3 * torch.randn(n, c, *spatial, device=device)).to(dtype)
    target = torch.randint(0, c, (n, *spatial), device=device)
    if lossk.ignore_index_can_occur(ignore_index, target_dtype):
        target[torch.rand(target.shape, device=device) < 0.2] = ignore_index
    weight = 10 * torch.rand(n, *spatial, device=device) if weighted else None
    return logits, target.to(target_dtype), weight


def check(actual, expected, dtype, target=None, ignore_index=-100, *, rounded=True):
    """``rounded``: the gradient was rounded once to its dtype (the kernel's store, with an
    upstream gradient of 1), so it must be the reference rounded to nearest: the odd element
    may differ where fp32 evaluation order crosses a rounding boundary; truncation or a
    second rounding would change far more."""
    (loss, grad), (ref_loss, ref_grad) = actual, expected
    assert loss.dtype == torch.float32 and loss.shape == ()
    assert torch.isfinite(loss), loss
    assert abs(loss.item() - ref_loss.item()) <= LOSS_TOL * max(abs(ref_loss.item()), 1e-6), (loss, ref_loss)
    assert grad.dtype == DTYPES[dtype] and grad.shape == ref_grad.shape
    assert not torch.isnan(grad.float()).any(), "a gradient element was not written"
    assert rel_err(grad, ref_grad) <= GRAD_TOL[dtype], rel_err(grad, ref_grad)
    if rounded and grad.dtype != torch.float32:
        assert (grad != ref_grad.to(grad.dtype)).float().mean() <= 0.01
    if target is not None:  # ignored pixels: exactly zero gradient
        ignored = (target.long() == ignore_index).unsqueeze(1).expand_as(grad)
        assert (grad[ignored] == 0).all()


# (weighted, target dtype, ignore_index): -100 is PyTorch's default; 255 with uint8 targets;
# an ignore_index inside [0, C) ignores that class. All three count on the device for mean;
# the path without a count (uint8 target, -100) is tested below.
CASES = [(True, torch.int64, -100), (False, torch.uint8, 255), (True, torch.int32, 1)]
SHAPES = {2: (3, 11, 13), 3: (2, 7, 9), 5: (2, 9, 5), 17: (2, 6, 7)}  # classes -> (N, H, W), odd sizes


@pytest.mark.parametrize("case", CASES, ids=["w-int64", "uint8-255", "w-int32-ign1"])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("classes", [2, 3, 5, 17])
@pytest.mark.parametrize("dtype", list(DTYPES))
def test_against_cross_entropy(dtype, classes, reduction, case):
    weighted, target_dtype, ignore = case
    n, h, w = SHAPES[classes]
    logits, target, weight = make_inputs(n, classes, (h, w), DTYPES[dtype], weighted=weighted,
                                         ignore_index=ignore, target_dtype=target_dtype)
    check(fused(logits, target, weight, ignore, reduction), reference(logits, target, weight, ignore, reduction),
          dtype, target, ignore)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_all_pixels_ignored_gives_zero_loss_and_gradient(reduction):
    logits, target, weight = make_inputs(2, 3, (5, 7), torch.bfloat16)
    target.fill_(-100)
    loss, grad = fused(logits, target, weight, reduction=reduction)
    assert loss.item() == 0.0
    assert (grad == 0).all()


def test_empty_batch_and_single_class():
    for n, c in ((0, 3), (2, 1)):  # no pixels: loss 0; one class: p = 1, loss and gradient 0
        logits, target, weight = make_inputs(n, c, (4, 5), torch.float32)
        loss, grad = fused(logits, target, weight)
        ref_loss, ref_grad = reference(logits, target, weight, -100, "mean")
        assert loss.item() == ref_loss.item() == 0.0
        assert grad.shape == ref_grad.shape and (grad == 0).all()


@pytest.mark.parametrize("layout", ["channels_last", "slice", "ncl", "transposed_target"])
def test_any_strides(layout):
    """Channels-last and 3-D inputs (pixels one strided axis), a slice and transposed
    target/weight (two pixel strides: the kernel's non-flat path)."""
    logits, target, weight = make_inputs(2, 4, (9, 10), torch.float16)
    if layout == "channels_last":
        logits = logits.contiguous(memory_format=torch.channels_last)
    elif layout == "slice":
        logits, target, weight = logits[:, :, 1:-1, 2:-1], target[:, 1:-1, 2:-1], weight[:, 1:-1, 2:-1]
    elif layout == "ncl":
        logits, target, weight = logits.flatten(2), target.flatten(1), weight.flatten(1)
    else:
        target, weight = target.mT.contiguous().mT, weight.mT.contiguous().mT
    x = logits.detach().requires_grad_()  # not a copy: keep the layout
    loss = lossk.weighted_softmax_ce(x, target, weight)
    loss.backward()
    check((loss.detach(), x.grad), reference(logits, target, weight, -100, "mean"), "fp16", target)


def test_every_autotune_config_on_the_interpreter():
    """Each GPU config forced, at a size where the big blocks overhang and the small ones
    leave several programs per image."""
    logits, target, weight = make_inputs(2, 3, (13, 11), torch.float32)
    expected = reference(logits, target, weight, -100, "mean")
    for cfg in lossk.get_autotune_config():
        check(fused(logits, target, weight, config=cfg), expected, "fp32", target)


def test_prune_keeps_the_tile_in_registers():
    configs = lossk.get_autotune_config()
    for block_c in (2, 16, 256):
        kept = lossk._prune(configs, {}, BLOCK_C=block_c)
        assert kept and all(c.kwargs["BLOCK_P"] * block_c <= lossk._MAX_TILE for c in kept)
    assert len(lossk._prune(configs, {}, BLOCK_C=2)) == len(configs)


def test_backend_triton_matches_backend_torch():
    logits, target, weight = make_inputs(2, 2, (7, 6), torch.bfloat16)
    results = []
    for backend in ("triton", "torch"):
        x = logits.detach().clone().requires_grad_()
        loss = weighted_cross_entropy(x, target, weight, backend=backend)
        loss.backward()
        results.append((loss.detach(), x.grad))
    (loss_t, grad_t), (loss_r, grad_r) = results
    assert abs(loss_t.item() - loss_r.item()) <= LOSS_TOL * abs(loss_r.item())
    assert grad_t.dtype == grad_r.dtype == torch.bfloat16
    assert rel_err(grad_t, grad_r) <= GRAD_TOL["bf16"]


@pytest.mark.parametrize("target_dtype, ignore, counted", [
    (torch.int64, -100, True), (torch.uint8, 255, True), (torch.int32, 1, True),
    (torch.uint8, -100, False), (torch.uint8, 300, False), (torch.int32, 2**40, False),
])
def test_count_pass_only_where_ignore_index_can_occur(monkeypatch, target_dtype, ignore, counted):
    """mean: the count kernel runs exactly when the target dtype can hold ignore_index;
    both paths match the reference (with ignored pixels where they can occur)."""
    calls = []
    original = lossk._inverse_count
    monkeypatch.setattr(lossk, "_inverse_count", lambda *a: (calls.append(1), original(*a)))
    logits, target, weight = make_inputs(2, 3, (6, 7), torch.bfloat16, ignore_index=ignore, target_dtype=target_dtype)
    assert ((target.long() == ignore).any()) == counted  # ignored pixels exactly where representable
    check(fused(logits, target, weight, ignore), reference(logits, target, weight, ignore, "mean"), "bf16", target, ignore)
    assert len(calls) == int(counted)
    calls.clear()
    check(fused(logits, target, weight, ignore, "sum"), reference(logits, target, weight, ignore, "sum"), "bf16")
    assert not calls  # sum never counts


def test_uint8_target_with_label_156_is_not_ignored_by_the_reference():
    """A uint8 target never holds ignore_index -100, so the PyTorch path must not count a
    label 156 (what -100 wraps to in uint8) as ignored: it matches F.cross_entropy on the
    int64 labels and the kernel, which counts every pixel."""
    from fastunet.train.loss import weighted_cross_entropy_reference

    logits, target, weight = make_inputs(1, 200, (3, 4), torch.float32, target_dtype=torch.uint8)
    target[0, 0, :2] = 156
    expected = (F.cross_entropy(logits, target.long(), reduction="none") * weight).mean()
    loss = weighted_cross_entropy_reference(logits, target, weight)
    assert abs(loss.item() - expected.item()) <= LOSS_TOL * expected.item()
    kernel = weighted_cross_entropy(logits, target, weight, backend="triton")
    assert abs(kernel.item() - expected.item()) <= LOSS_TOL * expected.item()


@pytest.mark.parametrize("target_dtype", [torch.int64, torch.uint8])
@pytest.mark.parametrize("dtype", list(DTYPES))
def test_upstream_gradient(dtype, target_dtype):
    """grad_output 1 leaves the stored gradient alone; 2.5 (through a mul) and -0.5 (given
    to backward) scale it in place: exactly the once-rounded gradient times the factor,
    rounded again, and the reference within tolerance."""
    logits, target, weight = make_inputs(2, 3, (5, 6), DTYPES[dtype], target_dtype=target_dtype)
    ref_loss, ref_grad = reference(logits, target, weight, -100, "mean")
    unit_loss, unit_grad = fused(logits, target, weight)
    check((unit_loss, unit_grad), (ref_loss, ref_grad), dtype, target)
    for factor in (2.5, -0.5):
        x = logits.clone().requires_grad_()
        loss = lossk.weighted_softmax_ce(x, target, weight)
        if factor == 2.5:
            (factor * loss).backward()
        else:
            loss.backward(torch.tensor(factor))
        assert torch.equal(x.grad, (unit_grad.float() * factor).to(unit_grad.dtype))
        assert rel_err(x.grad, factor * ref_grad) <= GRAD_TOL[dtype]


def test_small_blocks_many_programs(monkeypatch):
    """Count, reduction and scaling blocks shrunk so each image spans several count
    programs with a ragged tail, the one-program sums loop, and scaling programs overhang."""
    monkeypatch.setattr(lossk, "_COUNT_BLOCK", 16)
    monkeypatch.setattr(lossk, "_REDUCE_BLOCK", 4)
    monkeypatch.setattr(lossk, "_SCALE_BLOCK", 64)
    logits, target, weight = make_inputs(3, 2, (7, 9), torch.float16)
    ref_loss, ref_grad = reference(logits, target, weight, -100, "mean")
    check(fused(logits, target, weight), (ref_loss, ref_grad), "fp16", target)
    x = logits.clone().requires_grad_()
    (3 * lossk.weighted_softmax_ce(x, target, weight)).backward()
    assert not torch.isnan(x.grad).any() and rel_err(x.grad, 3 * ref_grad) <= GRAD_TOL["fp16"]


def test_no_grad_loss_only():
    logits, target, weight = make_inputs(2, 3, (5, 6), torch.float32)
    ref_loss, _ = reference(logits, target, weight, -100, "mean")
    loss = lossk.weighted_softmax_ce(logits, target, weight)  # no grad required: loss only
    assert not loss.requires_grad and abs(loss.item() - ref_loss.item()) <= LOSS_TOL * ref_loss.item()
    with torch.no_grad():
        loss = lossk.weighted_softmax_ce(logits.clone().requires_grad_(), target, weight)
    assert not loss.requires_grad and abs(loss.item() - ref_loss.item()) <= LOSS_TOL * ref_loss.item()


def test_second_backward_raises():
    logits, target, weight = make_inputs(1, 2, (4, 5), torch.float32)
    x = logits.requires_grad_()
    loss = lossk.weighted_softmax_ce(x, target, weight)
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="only once"):
        loss.backward()


def test_weight_requiring_grad_falls_back_or_raises():
    """The kernel gives no gradient to the weight map: 'auto' takes the reference on CUDA,
    'triton' refuses with the fix; under no_grad nothing is needed and the kernel runs."""
    assert _use_triton("auto", on_cuda=True, reduction="mean", weight_needs_grad=False)
    assert not _use_triton("auto", on_cuda=True, reduction="mean", weight_needs_grad=True)
    assert not _use_triton("auto", on_cuda=False, reduction="mean", weight_needs_grad=False)
    assert not _use_triton("auto", on_cuda=True, reduction="none", weight_needs_grad=False)
    assert _use_triton("triton", on_cuda=False, reduction="sum", weight_needs_grad=True)
    assert not _use_triton("torch", on_cuda=True, reduction="mean", weight_needs_grad=False)
    with pytest.raises(ValueError, match="backend must be"):
        _use_triton("cuda", on_cuda=True, reduction="mean", weight_needs_grad=False)

    logits, target, weight = make_inputs(2, 2, (4, 5), torch.float32)
    weight.requires_grad_()
    x = logits.clone().requires_grad_()
    with pytest.raises(ValueError, match=r"weight.detach\(\).*backend='torch'"):
        weighted_cross_entropy(x, target, weight, backend="triton")
    loss = weighted_cross_entropy(x, target, weight, backend="auto")  # CPU: the reference
    loss.backward()
    assert weight.grad is not None and x.grad is not None
    with torch.no_grad():
        loss = weighted_cross_entropy(logits, target, weight, backend="triton")
    assert abs(loss.item() - reference(logits, target, weight.detach(), -100, "mean")[0].item()) <= LOSS_TOL * loss.item()


def test_out_of_range_labels_give_nan_or_raise_when_checked():
    logits, target, weight = make_inputs(2, 3, (4, 5), torch.float32)
    target[1, 2, 3] = 3
    x = logits.requires_grad_()
    loss = lossk.weighted_softmax_ce(x, target, weight)
    assert torch.isnan(loss)
    loss.backward()
    assert torch.isnan(x.grad[1, :, 2, 3]).all()
    assert not torch.isnan(x.grad[0]).any()
    with pytest.raises(ValueError, match=r"labels in \[0, 3\).*\[3\]"):
        lossk.weighted_softmax_ce(logits, target, weight, check_labels=True)


def test_bad_arguments_raise_readable_errors():
    logits, target, weight = make_inputs(2, 3, (5, 6), torch.float32)
    f = lossk.weighted_softmax_ce
    with pytest.raises(ValueError, match=r"target \(N, H, W\) of shape \(2, 5, 6\)"):
        f(logits, target[:, :4])
    with pytest.raises(ValueError, match=r"weight \(N, H, W\) of shape \(2, 5, 6\)"):
        f(logits, target, weight[:1])
    with pytest.raises(ValueError, match=r"target \(N, L\) of shape \(2, 30\)"):
        f(logits.flatten(2), target)
    with pytest.raises(ValueError, match=r"logits \(N, C, H, W\) or \(N, C, L\)"):
        f(logits[0, 0], target)
    with pytest.raises(ValueError, match="int64, int32 or uint8 target"):
        f(logits, target.float())
    with pytest.raises(ValueError, match="float32 weight"):
        f(logits, target, weight.half())
    with pytest.raises(ValueError, match="float32, bfloat16 or float16"):
        f(logits.double(), target)
    with pytest.raises(ValueError, match="between 1 and 256 classes"):
        f(torch.zeros(1, 257, 2, 2), torch.zeros(1, 2, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="reduction 'mean' or 'sum'"):
        f(logits, target, reduction="none")
    with pytest.raises(TypeError, match="integer ignore_index"):
        f(logits, target, ignore_index=1.5)
    with pytest.raises(ValueError, match="weight.detach()"):
        f(logits, target, weight.requires_grad_())


# -- GPU: the real size, determinism, every autotune config, CUDA graphs ---------------------
@pytest.mark.gpu
@pytest.mark.parametrize("target_dtype", [torch.int64, torch.uint8], ids=["int64-count", "uint8-no-count"])
@pytest.mark.parametrize("dtype", list(DTYPES))
def test_real_size_gpu(dtype, target_dtype):
    logits, target, weight = make_inputs(8, 2, (388, 388), DTYPES[dtype], target_dtype=target_dtype, device="cuda")
    expected = reference(logits, target, weight, -100, "mean")
    first = fused(logits, target, weight)
    check(first, expected, dtype, target)
    again = fused(logits, target, weight)
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1]), "not deterministic"
    x = logits.clone().requires_grad_()
    lossk.weighted_softmax_ce(x, target, weight).backward(torch.tensor(-0.5, device="cuda"))
    assert torch.equal(x.grad, (first[1].float() * -0.5).to(x.grad.dtype))


@pytest.mark.gpu
@pytest.mark.parametrize("dtype, classes", [("bf16", 2), ("fp32", 17)])
def test_every_autotune_config_gpu(dtype, classes):
    logits, target, weight = make_inputs(2, classes, (388, 388), DTYPES[dtype], device="cuda")
    for reduction in ("mean", "sum"):
        expected = reference(logits, target, weight, -100, reduction)
        for cfg in lossk.get_autotune_config():
            check(fused(logits, target, weight, reduction=reduction, config=cfg), expected, dtype, target)


@pytest.mark.gpu
@pytest.mark.parametrize("target_dtype", [torch.int64, torch.uint8], ids=["int64-count", "uint8-no-count"])
def test_cuda_graph_capture_gpu(target_dtype):
    """Forward (count kernel included) and backward capture in a CUDA graph: no host sync;
    replays follow a changed upstream gradient held on the device."""
    logits, target, weight = make_inputs(2, 2, (388, 388), torch.bfloat16, target_dtype=target_dtype, device="cuda")
    grad_output = torch.ones((), device="cuda")
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # compile and autotune before capturing
        lossk.softmax_ce_backward(lossk.softmax_ce_forward(logits, target, weight)[1], grad_output)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        loss, grad = lossk.softmax_ce_forward(logits, target, weight)
        lossk.softmax_ce_backward(grad, grad_output)
    graph.replay()
    check((loss, grad), reference(logits, target, weight, -100, "mean"), "bf16", target)
    unit = grad.clone()
    grad_output.fill_(-2.0)
    graph.replay()
    assert torch.equal(grad, (unit.float() * -2.0).to(torch.bfloat16))
