"""benchmarks/device_check.sh in its dry mode (no GPU): every stage resolves its imports and
arguments and writes its stage JSON, so that a broken stage fails here and not on the lent GPU;
and every module the GPU stages import is on the GPU machine or among its wheels."""

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_STAGES = ["smoke", "p2bf16", "p1", "p3", "p2rest", "p45", "p3d"]
GPU_TEST_FILES = ["test_kernels", "test_conv_head", "test_fused", "test_loss_kernel", "test_training", "test_augment"]


def test_dry_run_resolves_every_stage_and_writes_its_json(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "FASTUNET_AUTOTUNE")}
    env.update(OUT=str(tmp_path), DEVICE_CHECK_BUDGET="240")
    proc = subprocess.run(["bash", "benchmarks/device_check.sh", "--dry"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    for stage in DEFAULT_STAGES + [f"tests-{name}" for name in GPU_TEST_FILES]:
        record = json.loads((tmp_path / f"stage-{stage}.json").read_text())
        assert record["rc"] == 0 and record["dry"] is True, record
    p1 = json.loads((tmp_path / "dry-p1.json").read_text())
    assert len(p1["calls"]) == 18 and all(c["kwargs"]["layers"] == [c["result"].split(".", 2)[2]] for c in p1["calls"])
    p2 = json.loads((tmp_path / "dry-p2bf16.json").read_text())
    assert p2["calls"][0]["kwargs"]["dtypes"] == ["bf16"]  # bf16 measured and written before the other dtypes
    p3d = json.loads((tmp_path / "dry-p3d.json").read_text())  # P2-3D in bf16, then the 14 conv shapes of Cicek's network
    assert [c["benchmark"] for c in p3d["calls"]] == ["P2-3D"] + ["P1-3D"] * 14
    versions = (tmp_path / "versions.txt").read_text()
    assert "--- pip check" in versions and "torch" in versions and "triton" in versions
    assert "total" in (tmp_path / "summary.txt").read_text()


def test_default_stages_in_order_within_300_seconds():
    script = (ROOT / "benchmarks" / "device_check.sh").read_text()
    assert 'stages=(smoke p2bf16 p1 p3 p2rest p45 p3d tests)' in script
    budget = int(script.split("budget=${DEVICE_CHECK_BUDGET:-")[1].split("}")[0])
    assert budget + 5 <= 300  # a stage killed at the budget's end gets 5 s more (timeout --kill-after)


def _imported(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_gpu_stages_import_only_what_the_gpu_machine_has():
    """Every third-party module imported by the package, the stage driver and the GPU test files
    is listed in benchmarks/device_packages.txt (the GPU machine's packages and wheels). The
    exceptions run in no GPU stage: bioimageio (the model export), xarray (imported only
    when an xarray input comes), napari and magicgui (the napari plugin's widgets, loaded by napari),
    openvino and nncf (the CPU backend and its int8 quantization)."""
    listed = {line.strip() for line in (ROOT / "benchmarks" / "device_packages.txt").read_text().splitlines()
              if line.strip() and not line.startswith("#")}
    files = [*(ROOT / "fastunet").rglob("*.py"), *(ROOT / "kernels").rglob("*.py"),
             ROOT / "benchmarks" / "device_stage.py", ROOT / "tests" / "conftest.py", ROOT / "tests" / "reference.py",
             *(ROOT / "tests" / f"{name}.py" for name in GPU_TEST_FILES)]
    local = {"fastunet", "reference", "fault_helpers", "io_samples", "conftest"}
    unknown = {}
    skip = {"bioimageio", "xarray", "napari", "magicgui", "openvino", "nncf"}
    for path in files:
        for name in _imported(path) - set(sys.stdlib_module_names) - local - listed - skip:
            unknown.setdefault(name, []).append(str(path.relative_to(ROOT)))
    assert not unknown, f"not on the GPU machine (add its wheel to ../shared/device/wheels): {unknown}"
