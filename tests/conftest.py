"""Test setup: run Triton kernels under the interpreter when there is no CUDA device.

TRITON_INTERPRET must be set before triton is first imported, so this happens at the top of
the conftest, which pytest imports before any test module.
"""

import os
import zlib

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
else:
    # One config per kernel instead of autotuning over all of them for every layer signature
    # (compiling them all takes longer than the suite may); test_every_autotune_config_passes_gpu
    # checks every config by forcing it. FASTUNET_AUTOTUNE=1 tests the autotuned path instead.
    os.environ.setdefault("FASTUNET_AUTOTUNE", "0")

import pytest  # noqa: E402

HAS_CUDA = torch.cuda.is_available()


def pytest_collection_modifyitems(config, items):
    if HAS_CUDA:
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _torch_backend_unless_openvino(request, monkeypatch, tmp_path_factory):
    """``backend="auto"`` on the CPU picks OpenVINO where the openvino package is installed
    (``fastunet[openvino]`` or ``[bench]``): the suite runs the same PyTorch path with or
    without it, except in tests marked ``openvino`` (skipped without the package), whose
    converted models go to a temporary cache folder."""
    from fastunet.engine import openvino_backend

    if "openvino" not in request.keywords:
        monkeypatch.setenv("FASTUNET_OPENVINO", "0")  # this process and the commands the test starts
        return
    if not openvino_backend.available():
        pytest.skip("needs the openvino package (pip install 'fastunet[openvino]')")
    monkeypatch.delenv("FASTUNET_OPENVINO", raising=False)
    monkeypatch.setenv("FASTUNET_CACHE", str(tmp_path_factory.mktemp("fastunet-cache")))


@pytest.fixture(autouse=True)
def _no_tf32_in_references():
    """On CUDA, PyTorch may run fp32 convolutions and matmuls in TF32 (cuDNN's default):
    then an "fp32" reference would carry ~1e-3 errors. The references here are true fp32;
    code under test that wants TF32 asks for it itself (and restores the flags)."""
    if not HAS_CUDA:
        yield
        return
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def seed_for(nodeid: str, setting: str | None = None) -> int:
    """The seed of a test: by default fixed, derived from its id (CI is deterministic, and
    each test still draws inputs of its own); ``FASTUNET_TEST_SEED=random`` draws a fresh one
    per run (to explore), ``FASTUNET_TEST_SEED=<number>`` replays one."""
    setting = (os.environ.get("FASTUNET_TEST_SEED") if setting is None else setting) or ""
    if setting.strip().lower() == "random":
        return int.from_bytes(os.urandom(4), "little")
    if setting.strip():
        return int(setting)
    return zlib.crc32(nodeid.encode())


@pytest.fixture(autouse=True)
def _seed(request):
    """Seed torch (the tests derive their numpy generators from ``torch.initial_seed()``) with
    :func:`seed_for`; the seed is printed, so a failure shows it (captured stdout)."""
    seed = seed_for(request.node.nodeid)
    torch.manual_seed(seed)
    print(f"{request.node.nodeid}: seed {seed} (replay with FASTUNET_TEST_SEED={seed})")
    yield


@pytest.fixture
def deny_output_writes(monkeypatch):
    """Make fastunet's write probe of an output folder fail with EACCES, whoever runs the
    tests (root writes into read-only folders, so chmod cannot simulate this)."""
    from pathlib import Path

    real = Path.write_bytes

    def write_bytes(self, data):
        if self.name.startswith(".fastunet-probe"):
            raise PermissionError(13, "Permission denied", str(self))
        return real(self, data)

    monkeypatch.setattr(Path, "write_bytes", write_bytes)
