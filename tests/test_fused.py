"""The whole fused U-Net against ReferenceUNet (interpreter on CPU, tiny configs)."""

import os
import subprocess
import sys

import pytest
import torch
from reference import TOL, TOL_PAPER, plan_tensors, poison_plans, reference_forward, rel_err
from torch import nn

from fastunet import ReferenceUNet, UNetConfig
from fastunet.engine import make_predictor
from fastunet.engine.fused import FusedUNet


def _buffers(net: FusedUNet) -> list[int]:
    return [t.data_ptr() for t in plan_tensors(net)]


def _random_biases(model: ReferenceUNet) -> None:
    """Random biases: no dead-ReLU regions where every logit ties."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
                module.bias.normal_(0.0, 0.1)


def _check_against_reference(net: FusedUNet, model: ReferenceUNet, x: torch.Tensor, dtype: str, tol: float):
    """Scores within ``tol`` of the storage-rounded reference; labels and probabilities of
    the fused head consistent with them. Returns (fused scores, reference scores)."""
    logits = net(x).clone()
    expected = reference_forward(model, x, dtype)
    assert rel_err(logits, expected) <= tol, rel_err(logits, expected)
    pred = net.predict(x, "both")
    # Labels: identical wherever the reference's top-2 margin is clearly above the dtype's
    # error (a near-tie may flip either way with another summation order); such pixels
    # must be the vast majority, so the check is never vacuous.
    assert torch.equal(pred.labels.long(), logits.argmax(1))  # the head's argmax of its own scores
    top2 = expected.topk(2, dim=1).values
    clear = (top2[:, 0] - top2[:, 1]) > 2 * (logits - expected).abs().amax(1)
    assert clear.float().mean().item() >= 0.9, clear.float().mean().item()
    assert torch.equal(pred.labels.long()[clear], expected.argmax(1)[clear])
    # probabilities against the softmax of the fused scores (the head's own), and their error
    # against the reference bounded by the scores' (softmax is 1/2-Lipschitz per pixel)
    torch.testing.assert_close(pred.probs.float(), logits.softmax(1), atol=2e-3, rtol=1e-2)
    prob_err = (pred.probs.float() - expected.softmax(1)).abs().amax(1)
    assert torch.all(prob_err <= 0.5 * (logits - expected).abs().amax(1) + 2e-3)
    return logits, expected


@pytest.mark.parametrize(
    "dtype, cfg",
    [
        ("fp32", UNetConfig(in_channels=2, num_classes=3, base_channels=6, depth=2)),
        ("tf32", UNetConfig(in_channels=1, num_classes=2, base_channels=4, depth=2)),
        ("fp16", UNetConfig(in_channels=1, num_classes=3, base_channels=8, depth=2)),
        ("bf16", UNetConfig(in_channels=2, num_classes=2, base_channels=5, depth=2)),
    ],
)
def test_fused_network_matches_reference(dtype, cfg):
    model = ReferenceUNet(cfg).eval()
    _random_biases(model)
    net = FusedUNet(model, device="cpu", dtype=dtype)
    x = torch.randn(2, cfg.in_channels, 44, 60)  # non-square valid tile, batch 2
    net(x)
    poison_plans(net)
    x = torch.randn_like(x)  # fresh input for the checked run
    logits, _ = _check_against_reference(net, model, x, dtype, TOL[dtype][1])
    assert logits.shape == (2, cfg.num_classes, 4, 20)
    # Against the pure fp32 reference, the 16-bit paths differ by their storage rounding.
    loose = {"fp32": 1e-5, "tf32": 1e-3, "fp16": 1e-2, "bf16": 6e-2}[dtype]
    assert rel_err(logits, model(x).detach()) <= loose


def test_the_cli_switches_the_interpreter_on_the_library_never_does(tmp_path):
    """The interpreter is a setting of the whole process: the library refuses a CPU device
    without it (one line with the fix), the fastunet command (the process's owner) sets it for
    --backend triton on a machine without CUDA."""
    import numpy as np
    import tifffile

    from fastunet import save_model

    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    script = """
import os, torch
from fastunet import ReferenceUNet, UNetConfig, UserError
from fastunet.engine import make_predictor
model = ReferenceUNet(UNetConfig(base_channels=4, depth=1)).eval()
try:
    make_predictor(model, backend="triton", device="cpu")
except UserError as exc:
    print(exc)
print("TRITON_INTERPRET" in os.environ)
"""
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-2000:]
    message, touched = proc.stdout.strip().splitlines()
    assert "TRITON_INTERPRET=1" in message and touched == "False"
    model = ReferenceUNet(UNetConfig(base_channels=4, depth=1)).eval()
    save_model(tmp_path / "m.safetensors", model)
    image = np.random.default_rng(torch.initial_seed()).random((30, 30)).astype(np.float32)
    tifffile.imwrite(tmp_path / "in.tif", image)
    argv = [sys.executable, "-m", "fastunet", "segment", str(tmp_path / "in.tif"), "-o", str(tmp_path / "out.tif"),
            "--model", str(tmp_path / "m.safetensors"), "--backend", "triton", "--device", "cpu", "--kind", "labels",
            "--tile", "28", "--quiet"]
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert tifffile.imread(tmp_path / "out.tif").shape == (30, 30)


def test_buffers_are_planned_once_and_shape_changes_work():
    cfg = UNetConfig(in_channels=1, num_classes=2, base_channels=4, depth=1)
    model = ReferenceUNet(cfg).eval()
    net = FusedUNet(model, device="cpu", dtype="fp32")
    x = torch.randn(2, 1, 28, 36)
    net(x)
    first = _buffers(net)
    y = torch.randn(2, 1, 28, 36)
    out = net(y)
    assert _buffers(net) == first  # no new allocation for the same shape
    torch.testing.assert_close(out, model(y).detach(), rtol=1e-5, atol=1e-5)
    z = torch.randn(1, 1, 36, 28)  # another shape: a new plan, still correct
    torch.testing.assert_close(net(z), model(z).detach(), rtol=1e-5, atol=1e-5)
    assert len(net._plans) == 2


def test_triton_predictor_matches_torch_predictor():
    cfg = UNetConfig(in_channels=1, num_classes=3, base_channels=4, depth=1)
    model = ReferenceUNet(cfg).eval()
    x = torch.randn(3, 1, 28, 28)
    fused = make_predictor(model, backend="triton", device="cpu", dtype="fp32").predict(x, "both")
    plain = make_predictor(model, backend="torch", device="cpu", dtype="fp32").predict(x, "both")
    assert torch.equal(fused.labels, plain.labels)
    torch.testing.assert_close(fused.probs.float(), plain.probs.float(), atol=1e-3, rtol=1e-3)


def test_invalid_tile_names_nearest_sizes():
    model = ReferenceUNet(UNetConfig(base_channels=4, depth=2)).eval()
    net = FusedUNet(model, device="cpu", dtype="fp32")
    with pytest.raises(ValueError, match="Nearest valid: 44, 48"):
        net(torch.randn(1, 1, 46, 44))
    with pytest.raises(ValueError, match=r"\(N, 1, H, W\)"):
        net(torch.randn(1, 2, 44, 44))


# The paper's network at its real sizes: tiles 572 and 1052, batch 1-8, every dtype path.
def test_cpu_kernels_after_triton_was_set_up_for_the_gpu_is_a_clear_error():
    """Triton fixes compile-or-interpret when its jit functions are defined: once triton was
    imported without the interpreter, the CPU cannot be switched over in that process."""
    script = """
import triton, torch
from fastunet import ReferenceUNet, UNetConfig
from fastunet.engine.fused import FusedUNet
try:
    FusedUNet(ReferenceUNet(UNetConfig(base_channels=4, depth=1)), device="cpu", dtype="fp32")
except Exception as exc:
    print(type(exc).__name__, exc)
"""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.startswith("UserError ") and "start it with TRITON_INTERPRET=1" in proc.stdout, proc.stdout


GPU_CASES = [
    ("bf16", 572, 1), ("bf16", 572, 8), ("bf16", 1052, 2), ("bf16", 1052, 8),
    ("fp16", 572, 4), ("fp16", 1052, 2),
    ("tf32", 572, 2), ("tf32", 1052, 1),
    ("fp32", 572, 1), ("fp32", 1052, 1),
]


@pytest.mark.gpu
@pytest.mark.timeout(600)  # the first call compiles each kernel variant of this dtype path
@pytest.mark.parametrize("dtype, tile, batch", GPU_CASES)
def test_fused_paper_network_on_gpu(dtype, tile, batch):
    model = ReferenceUNet(UNetConfig()).eval().cuda()
    _random_biases(model)
    net = FusedUNet(model, device="cuda", dtype=dtype)
    x = torch.randn(batch, 1, tile, tile, device="cuda")
    net(x)
    poison_plans(net)
    _check_against_reference(net, model, torch.randn_like(x), dtype, TOL_PAPER[dtype])


@pytest.mark.gpu
def test_cuda_graph_replay_matches_eager():
    model = ReferenceUNet(UNetConfig(base_channels=16)).eval().cuda()
    eager = FusedUNet(model, device="cuda", dtype="bf16")
    graphed = FusedUNet(model, device="cuda", dtype="bf16", cuda_graph=True)
    for _ in range(3):
        x = torch.randn(2, 1, 572, 572, device="cuda")
        assert torch.equal(graphed(x), eager(x))
