"""S1, the scale benchmark (fastunet/bench/scale.py): sizes, the CPU path, one tiny real run."""

import json

import pytest

from fastunet import bench
from fastunet.bench import scale
from fastunet.cli import main
from fastunet.model import UNetConfig


def test_s1_is_chosen_by_name_sizes_its_volume_and_needs_no_gpu(tmp_path, monkeypatch, capsys):
    runs = []

    def one_run(n, **kwargs):
        runs.append((n, kwargs))
        return {"workers": n, "mvoxel_per_s": 2.0 * n}

    monkeypatch.setattr(scale, "_one_run", one_run)
    model = bench.random_model_file(tmp_path / "m.safetensors", UNetConfig(base_channels=4, depth=2))
    figures, ratios = scale.bench_scale(workers=(1, 2, 4), memory_limit="256KiB", factor=16, chunk=32, model=model,
                                        cache_dir=tmp_path)
    assert figures["volume_shape"] == [128, 128, 128] and figures["volume_bytes"] == 16 * 256 * 1024
    assert figures["factor"] == 16 and [n for n, _ in runs] == [1, 2, 4]
    assert runs[0][1]["limit"] == 256 * 1024 and runs[0][1]["device"] == "cpu"
    assert ratios == {"throughput_2_vs_1_workers": 2.0, "throughput_4_vs_1_workers": 4.0}
    assert bench._benchmark_names("s1") == ["S1"]
    monkeypatch.setattr(bench, "SCALE", {"S1": lambda **kw: ({"runs": [], "kw": sorted(kw)}, {})})
    assert main(["bench", "--only", "S1", "--quick", "--out", str(tmp_path / "r"), "--cache", str(tmp_path)]) == 0
    written = json.loads(next((tmp_path / "r").glob("*S1.json")).read_text())
    assert written["figures"]["kw"] == ["cache_dir", "chunk", "factor", "memory_limit"]
    assert "wrote" in capsys.readouterr().out


@pytest.mark.slow
def test_s1_runs_segment_on_a_local_cluster_with_a_memory_limit(tmp_path):
    model = bench.random_model_file(tmp_path / "m.safetensors", UNetConfig(base_channels=4, depth=2))
    figures, ratios = scale.bench_scale(workers=(1,), memory_limit="1GiB", factor=0.0001, chunk=32, model=model,
                                        tile=92, cache_dir=tmp_path)
    (run,) = figures["runs"]
    assert figures["volume_shape"] == [4, 128, 128] and ratios == {}
    assert run["workers"] == 1 and run["blocks"] >= 1 and not run["workers_lost"]
    assert run["mvoxel_per_s"] > 0 and 0 < run["peak_worker_fraction_of_limit"] < 1
    assert not (tmp_path / "scale-4x128x128.zarr").exists()  # the output is removed after the runs
