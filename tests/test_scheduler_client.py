"""dask.distributed: an active Client runs file outputs; scheduler= takes a Client, a Cluster or
an address (a small in-process LocalCluster here)."""

import numpy as np
import pytest
import zarr
from test_segment_cli import _model, _rng

from fastunet import Segmenter, segment
from fastunet.errors import UserError


@pytest.fixture
def model(tmp_path):
    return str(_model(tmp_path / "m.safetensors"))


@pytest.fixture
def source(tmp_path):
    data = _rng().normal(size=(2, 40, 36)).astype(np.float32)
    arr = zarr.create_array(str(tmp_path / "in.zarr"), shape=data.shape, chunks=(1, 20, 18), dtype=data.dtype)
    arr[:] = data
    return str(tmp_path / "in.zarr")


@pytest.fixture
def cluster():
    from distributed import LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=2, processes=False, dashboard_address=None) as c:
        yield c


def _blocks_run_by(client, run) -> list[str]:
    from distributed import get_task_stream

    with get_task_stream(client) as stream:
        run()
    return sorted({str(t["key"]) for t in stream.data if "fastunet-block" in str(t["key"])})


def test_an_active_client_runs_file_outputs(tmp_path, model, source, cluster):
    from distributed import Client

    common = dict(axes="ZYX", tile=52, block=(1, 20, 18), progress=False, output_kind="labels")
    reference = segment(source, model, tmp_path / "ref.zarr", **common)[:]  # threads: no client yet
    with Client(cluster) as client:
        seg = Segmenter(model, tile=52)
        keys = _blocks_run_by(client, lambda: seg.segment(source, tmp_path / "a.zarr", axes="ZYX", block=(1, 20, 18),
                                                          progress=False, output_kind="labels"))
        assert len(keys) == seg.last_summary["blocks"] == 8
        assert seg.last_summary["scheduler"] == f"dask client {cluster.scheduler_address}"
        np.testing.assert_array_equal(zarr.open_group(str(tmp_path / "a.zarr"))["labels"][:], reference)
        # A lazy result stays lazy (computed where the caller computes it), untouched by the client.
        lazy = segment(source, model, None, **common)
        np.testing.assert_array_equal(np.asarray(lazy), reference)
        # scheduler= as a Client (left open), a Cluster, or an address.
        for i, scheduler in enumerate((client, cluster, cluster.scheduler_address)):
            out = tmp_path / f"s{i}.zarr"
            keys = _blocks_run_by(client, lambda: segment(source, model, out, scheduler=scheduler, **common))
            assert len(keys) == 8, scheduler
            np.testing.assert_array_equal(zarr.open_group(str(out))["labels"][:], reference)
        assert client.status == "running"
    # A TIFF output through the Client as well.
    with Client(cluster) as client:
        keys = _blocks_run_by(client, lambda: segment(source, model, tmp_path / "t.tif", **common))
        assert len(keys) == 8


def test_a_scheduler_of_another_type_is_one_clear_error(tmp_path, model, source):
    with pytest.raises(TypeError, match=r"scheduler= expects a dask.distributed Client, a Cluster .* got int"):
        segment(source, model, tmp_path / "o.zarr", axes="ZYX", scheduler=8786, progress=False)
    assert not (tmp_path / "o.zarr").exists()
    with pytest.raises(UserError, match="exclude each other"):
        segment(source, model, tmp_path / "o.zarr", axes="ZYX", scheduler="tcp://x:1", workers=2)
