"""Remote stores: inputs and outputs as URLs, against a real S3-compatible server (moto's,
started here on 127.0.0.1 for this module), with the identity and resume checks of local
runs; ``memory://`` for the quick checks; the lease that makes one run write an output."""

import logging
import os

import numpy as np
import pytest
import torch
import zarr
from fault_helpers import small_model

from fastunet import segment
from fastunet.cli import main
from fastunet.errors import UserError
from fastunet.io import input_fingerprint, open_volume

moto_server = pytest.importorskip("moto.server", reason="the S3 tests need moto[server]")
pytest.importorskip("s3fs", reason="the S3 tests need s3fs")

BUCKET = "fastunet-test"


@pytest.fixture(scope="module")
def s3():
    """A moto S3 server on 127.0.0.1 (a free port), its endpoint and test credentials in the
    environment for this module (as a user sets them: AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID...)."""
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no line per request
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_ENDPOINT_URL": f"http://{host}:{port}"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()
    s3fs.S3FileSystem().mkdir(BUCKET)
    try:
        yield env["AWS_ENDPOINT_URL"]
    finally:
        server.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        s3fs.S3FileSystem.clear_instance_cache()


@pytest.fixture
def prefix(request):
    """A fresh key prefix per test."""
    return f"s3://{BUCKET}/{request.node.name}"


def _rng():
    return np.random.default_rng(torch.initial_seed())


def _model(path):
    return small_model(path)


def _put(url, data, chunks):
    arr = zarr.create_array(url, shape=data.shape, chunks=chunks, dtype=data.dtype)
    arr[:] = data
    return url


def test_s3_input_and_output_match_a_local_run_and_resume(s3, prefix, tmp_path, monkeypatch):
    model = _model(tmp_path / "m.safetensors")
    data = _rng().normal(size=(3, 32, 36)).astype(np.float32)
    src = _put(f"{prefix}/in.zarr", data, (1, 32, 36))
    out = f"{prefix}/out.zarr"
    local = np.asarray(segment(data, model, None, axes="ZYX", tile=52))
    # an interrupted run: the 2nd block task fails, 1 block is recorded in the object store
    from fastunet.engine import scheduling

    real, calls = scheduling.run_block, []

    def run_block(job, block):
        calls.append(block.name)
        if len(calls) == 2:
            raise RuntimeError("injected failure")
        return real(job, block)

    with monkeypatch.context() as m:
        m.setattr(scheduling, "run_block", run_block)
        with pytest.raises(RuntimeError, match="injected"):
            segment(src, model, out, axes="ZYX", tile=52, block=(1, 32, 36), progress=False, threads=1)
    meta = zarr.open_group(out, mode="r").attrs["fastunet"]
    assert meta["complete"] is False and meta["input_id"]["path"] == src
    from fastunet.io import SegmentationStore

    done = SegmentationStore(out).done()
    assert calls[0] in done and calls[1] not in done  # the failed block is not recorded
    # without resume the partial output is refused; a lock object is not left behind
    with pytest.raises(UserError, match="already exists.*resume=True"):
        segment(src, model, out, axes="ZYX", tile=52, progress=False)
    labels = segment(src, model, out, axes="ZYX", tile=52, block=(1, 32, 36), progress=False, resume=True)
    np.testing.assert_array_equal(labels[:], local)
    assert zarr.open_group(out, mode="r").attrs["fastunet"]["complete"] is True
    import s3fs

    fs = s3fs.S3FileSystem()
    fs.invalidate_cache()
    left = fs.ls(f"{BUCKET}/{prefix.rsplit('/', 1)[-1]}")
    assert not any("fastunet-lock" in p for p in left), left
    # the same values at another key: a resume is refused (the input moved: a warning; changed: refused)
    other = _put(f"{prefix}/other.zarr", data + 1, (1, 32, 36))
    with pytest.raises(UserError, match="Cannot resume.*mix two inputs"):
        segment(other, model, out, axes="ZYX", tile=52, progress=False, resume=True)


def test_s3_fingerprint_reads_a_bounded_number_of_keys_and_lists_once(s3, prefix, monkeypatch):
    """The values: the chunks around a fixed lattice only; the chunk files: one listing (with
    each object's size and ETag; one request per 1000 objects), never a read of every chunk."""
    data = _rng().integers(0, 1000, size=(2, 96, 96)).astype(np.uint16)
    src = _put(f"{prefix}/many.zarr", data, (1, 8, 8))  # 288 chunks
    vol = open_volume(src, axes="ZYX")
    import s3fs

    seen, listings = [], []
    real_cat, real_find = s3fs.S3FileSystem._cat_file, s3fs.S3FileSystem.find

    async def counting(self, path, *args, **kwargs):
        seen.append(path)
        return await real_cat(self, path, *args, **kwargs)

    def listing(self, path, *args, **kwargs):
        listings.append(path)
        return real_find(self, path, *args, **kwargs)

    monkeypatch.setattr(s3fs.S3FileSystem, "_cat_file", counting)
    monkeypatch.setattr(s3fs.S3FileSystem, "find", listing)
    fp = input_fingerprint(vol)
    chunks = [p for p in seen if "/c/" in p]
    assert fp["path"] == src and "chunks" in fp and "metadata" in fp
    assert 0 < len(chunks) <= 2 * 4 * 4  # the chunks around a 2x4x4 lattice, not the 288 chunks
    assert len(listings) == 1 and int(fp["chunk_sizes"].split(":")[0]) >= 288  # each chunk's size and ETag


def test_s3_storage_options_and_cli_flag(s3, prefix, tmp_path, capsys, monkeypatch):
    model = _model(tmp_path / "m.safetensors")
    data = _rng().normal(size=(40, 36)).astype(np.float32)
    src = _put(f"{prefix}/in.zarr", data, (20, 18))
    monkeypatch.delenv("AWS_ENDPOINT_URL")  # the endpoint now comes from the option only
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()
    out = f"{prefix}/cli.zarr"
    code = main(["segment", src, "-o", out, "--model", model, "--tile", "52", "--kind", "labels", "--quiet",
                 "--storage-option", f"endpoint_url={s3}", "--storage-option", "use_listings_cache=false"])
    assert code == 0, capsys.readouterr().err
    got = zarr.open_group(out, mode="r", storage_options={"endpoint_url": s3})["labels"][:]
    np.testing.assert_array_equal(got, np.asarray(segment(data, model, None, tile=52, output_kind="labels")))
    code = main(["segment", src, "-o", f"{prefix}/x.zarr", "--model", model, "--storage-option", "novalue"])
    assert code == 2 and "--storage-option expects KEY=VALUE" in capsys.readouterr().err


def test_lease_refuses_a_second_writer_and_can_be_broken(s3, prefix, caplog):
    from upath import UPath

    from fastunet.io.lock import OutputLock

    out = UPath(f"{prefix}/locked.zarr")
    first = OutputLock(out).acquire()
    try:
        with pytest.raises(UserError) as refused:
            OutputLock(out).acquire()
        message = str(refused.value)
        assert message.count("\n") == 0 and f"pid {os.getpid()}" in message and "host " in message
        assert "started " in message and "break_lock=True" in message and ".locked.zarr.fastunet-lock" in message
        with caplog.at_level(logging.WARNING, logger="fastunet.io"):
            second = OutputLock(out, break_lock=True).acquire()
        assert "breaking the lease" in caplog.text
        second.release()
    finally:
        first.release()  # its token is no longer the lease's: nothing deleted twice
    stale = OutputLock(out, lease=-1.0).acquire()  # a lease that expired at once (a killed holder)
    stale._stop.set()
    taken = OutputLock(out).acquire()  # taken over without break_lock
    taken.release()


def test_memory_urls_http_and_unknown_protocols(tmp_path, monkeypatch):
    model = _model(tmp_path / "m.safetensors")
    data = _rng().normal(size=(36, 40)).astype(np.float32)
    src = _put("memory://fastunet-test/in.zarr", data, (18, 20))
    out = segment(src, model, "memory://fastunet-test/out.zarr", tile=52, progress=False)
    np.testing.assert_array_equal(out[:], np.asarray(segment(data, model, None, tile=52)))
    with pytest.raises(UserError, match="read-only"):
        segment(src, model, "https://example.invalid/out.zarr", tile=52, progress=False)
    with pytest.raises(UserError, match="TIFF outputs are written to local files"):
        segment(src, model, "memory://fastunet-test/out.tif", tile=52, progress=False)
    with pytest.raises(UserError, match="Unknown protocol 'nosuch'"):
        segment("nosuch://x/in.zarr", model, None)
    import fsspec

    def missing(protocol):
        raise ImportError(f"Install gcsfs to access {protocol}")

    monkeypatch.setattr(fsspec, "get_filesystem_class", missing)
    with pytest.raises(UserError, match=r"needs gcsfs.*pip install 'fastunet\[cloud\]'"):
        segment("gs://bucket/in.zarr", model, None)
