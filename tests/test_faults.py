"""Faults during a run: lost workers, flaky storage, full disks, a second writer, out of
memory, Ctrl-C under the Triton interpreter and SIGTERM. Each ends in the output an
undisturbed run gives, or in one line and an output that ``resume`` completes."""

import errno
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr
from fault_helpers import small_model

from fastunet import segment
from fastunet.cli import main
from fastunet.errors import UserError
from fastunet.io import SegmentationStore

REPO = Path(__file__).resolve().parents[1]


def _rng():
    return np.random.default_rng(torch.initial_seed())


def _model(path, depth=2):
    return small_model(path, depth)


def _zarr(path, data, chunks):
    arr = zarr.create_array(str(path), shape=data.shape, chunks=chunks, dtype=data.dtype)
    arr[:] = data
    return str(path)


@pytest.fixture
def model(tmp_path):
    return _model(tmp_path / "m.safetensors")


# ------------------------------------------------------------------------- lost workers
@pytest.mark.slow
def test_a_worker_killed_mid_run_is_replaced_and_the_output_is_identical(tmp_path, model, caplog):
    from fault_helpers import KillOnce

    data = _rng().normal(size=(4, 32, 40)).astype(np.float32)
    marker = tmp_path / "killed"
    kw = dict(axes="ZYX", tile=52, chunks=(1, 32, 40), block=(1, 32, 40), progress=False,
              threads=torch.get_num_threads())
    undisturbed = segment(data, model, tmp_path / "a.zarr", **kw)
    with caplog.at_level(logging.WARNING, logger="fastunet.engine"):
        out = segment(KillOnce(data, marker, z=2), model, tmp_path / "b.zarr", workers=2, **kw)
    assert marker.exists()  # a worker was SIGKILLed while reading block z2
    np.testing.assert_array_equal(out[:], undisturbed[:])
    assert zarr.open_group(str(tmp_path / "b.zarr"), mode="r").attrs["fastunet"]["summary"]["computed"] == 4
    assert "was lost while running blocks" in caplog.text and "z2-3_y0-32_x0-40" in caplog.text, caplog.text


# ---------------------------------------------------------------------- flaky storage
def test_chunk_reads_and_writes_that_fail_at_first_are_retried(tmp_path, model, monkeypatch, caplog):
    from zarr.storage import LocalStore

    data = _rng().normal(size=(2, 32, 36)).astype(np.float32)
    src = _zarr(tmp_path / "in.zarr", data, (1, 16, 18))
    reference = np.asarray(segment(data, model, None, axes="ZYX", tile=52, output_kind="labels"))
    failures = {"in.zarr/c/1/1/0": 2, "o.zarr/labels/c/0/0/1": 3}  # transient EIO, then fine
    real_get, real_set = LocalStore.get, LocalStore.set

    def flaky(key):
        for name, left in failures.items():
            if key.endswith(name) and left:
                failures[name] -= 1
                raise OSError(errno.EIO, "Input/output error (injected)")

    async def get(self, key, *args, **kwargs):
        flaky(f"{self.root}/{key}")
        return await real_get(self, key, *args, **kwargs)

    async def set(self, key, value):
        flaky(f"{self.root}/{key}")
        return await real_set(self, key, value)

    monkeypatch.setattr(LocalStore, "get", get)
    monkeypatch.setattr(LocalStore, "set", set)
    with caplog.at_level(logging.WARNING, logger="fastunet.io"):
        out = segment(src, model, tmp_path / "o.zarr", axes="ZYX", tile=52, block=(1, 16, 36), progress=False,
                      output_kind="labels")
    np.testing.assert_array_equal(out[:], reference)
    assert failures == {"in.zarr/c/1/1/0": 0, "o.zarr/labels/c/0/0/1": 0}
    assert caplog.text.count("failed (OSError") == 5 and "retry 3 of 3" in caplog.text


# ------------------------------------------------------------------------- full disks
def _full_disk(monkeypatch, when):
    """Make writes of output label chunks fail with ENOSPC when ``when(key)`` is true."""
    from zarr.storage import LocalStore

    real_set = LocalStore.set

    async def set(self, key, value):
        if "/labels/" in f"/{key}" and when(key):
            raise OSError(errno.ENOSPC, "No space left on device")
        return await real_set(self, key, value)

    monkeypatch.setattr(LocalStore, "set", set)


def test_disk_full_mid_run_is_one_line_and_resume_completes_after_space_is_freed(tmp_path, model, capsys,
                                                                                 monkeypatch):
    data = _rng().normal(size=(4, 32, 32)).astype(np.float32)
    src = _zarr(tmp_path / "in.zarr", data, (1, 32, 32))
    out = tmp_path / "o.zarr"
    argv = ["segment", src, "-o", str(out), "--model", model, "--axes", "ZYX", "--tile", "52", "--block", "1,32,32",
            "--kind", "labels", "--quiet"]
    with monkeypatch.context() as m:
        _full_disk(m, lambda key: key.endswith(("2/0/0", "3/0/0")))  # planes 2 and 3 do not fit
        code = main(argv)
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1, err
    assert "No space left on device while writing" in err and "finished blocks stay recorded" in err
    assert "--resume" in err and "Traceback" not in err
    done = SegmentationStore(out).done()
    assert {"z0-1_y0-32_x0-32", "z1-2_y0-32_x0-32"} <= done and not any(n.startswith(("z2", "z3")) for n in done)
    assert main([*argv, "--resume"]) == 0  # space freed
    np.testing.assert_array_equal(zarr.open_group(str(out))["labels"][:],
                                  np.asarray(segment(data, model, None, axes="ZYX", tile=52, output_kind="labels")))


def test_disk_full_before_the_first_block_leaves_nothing_even_with_writes_in_flight(tmp_path, model, capsys,
                                                                                   monkeypatch):
    """One chunk of the first block fails at once while the block's other chunks are still
    being written (zarr writes them concurrently): the output is removed only after they
    stopped, so no stub is left that a rerun, --overwrite or --resume would refuse."""
    from zarr.storage import LocalStore

    data = _rng().normal(size=(1, 64, 64)).astype(np.float32)
    src = _zarr(tmp_path / "in.zarr", data, (1, 32, 32))
    out = tmp_path / "o.zarr"
    argv = ["segment", src, "-o", str(out), "--model", model, "--axes", "ZYX", "--tile", "52", "--kind", "labels",
            "--quiet"]
    real_set, late = LocalStore.set, []

    async def set(self, key, value):
        if "labels/c/" in key:
            if key.endswith("0/0/0"):
                raise OSError(errno.ENOSPC, "No space left on device")
            import asyncio

            await asyncio.sleep(0.3)  # still writing when the first chunk has failed
            late.append(key)
        return await real_set(self, key, value)

    with monkeypatch.context() as m:
        m.setattr(LocalStore, "set", set)
        code = main(argv)
    err = capsys.readouterr().err
    assert code == 2 and "No space left on device" in err, err
    assert late, "the other chunks of the block were written after the failure"
    assert not out.exists(), sorted(p.relative_to(out) for p in out.rglob("*"))
    assert main(argv) == 0  # a plain rerun after space was freed


def test_unwritable_output_mid_run_is_one_line(tmp_path, model, capsys, monkeypatch):
    data = _rng().normal(size=(2, 32, 32)).astype(np.float32)
    src = _zarr(tmp_path / "in.zarr", data, (1, 32, 32))
    with monkeypatch.context() as m:
        from zarr.storage import LocalStore

        real_set = LocalStore.set

        async def set(self, key, value):
            if "labels/c/1" in key:
                raise PermissionError(errno.EACCES, "Permission denied")
            return await real_set(self, key, value)

        m.setattr(LocalStore, "set", set)
        code = main(["segment", src, "-o", str(tmp_path / "o.zarr"), "--model", model, "--axes", "ZYX", "--kind",
                     "labels", "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "Permission denied while writing" in err, err
    assert "make the output location writable" in err


# ---------------------------------------------------------------------- one writer
def test_a_second_run_on_a_locked_output_names_the_holder(tmp_path, model, capsys):
    from fastunet.io.lock import OutputLock

    data = _rng().normal(size=(32, 32)).astype(np.float32)
    src = _zarr(tmp_path / "in.zarr", data, (32, 32))
    out = tmp_path / "o.zarr"
    argv = ["segment", src, "-o", str(out), "--model", model, "--quiet"]
    held = OutputLock(out).acquire()  # another run creating or resuming this output
    try:
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"pid {os.getpid()}" in err and "started " in err, err
        assert "--break-lock" in err and ".o.zarr.fastunet-lock" in err
        assert not out.exists()
        assert main([*argv, "--break-lock"]) == 0  # a stale lock broken on purpose
    finally:
        held.release()
    assert main([*argv, "--resume"]) == 0  # released after each run


# ----------------------------------------------------------------------- out of memory
class _OOMAbove:
    """A predictor that runs out of (simulated GPU) memory above one tile of ``edge`` pixels."""

    def __init__(self, inner, edge):
        self.inner, self.edge, self.calls = inner, edge, []
        self.device, self.backend, self.dtype, self.config = inner.device, inner.backend, inner.dtype, inner.config

    def predict(self, tiles, output="labels"):
        self.calls.append(tuple(tiles.shape))
        if tiles.shape[0] > 1 or tiles.shape[-1] > self.edge:
            raise torch.OutOfMemoryError("CUDA out of memory (injected)")
        return self.inner.predict(tiles, output)


def test_out_of_memory_halves_the_batch_then_the_tile_and_goes_on(tmp_path, model, monkeypatch, caplog):
    from fastunet.engine import backends

    real = backends.make_predictor
    made = []

    def make_predictor(*args, **kwargs):
        made.append(_OOMAbove(real(*args, **kwargs), edge=64))
        return made[-1]

    data = _rng().normal(size=(3, 60, 56)).astype(np.float32)
    reference = segment(data, model, None, axes="ZYX", tile=92, batch_size=2, output_kind="both")
    monkeypatch.setattr(backends, "make_predictor", make_predictor)
    with caplog.at_level(logging.WARNING, logger="fastunet.engine"):
        labels, probs = segment(data, model, None, axes="ZYX", tile=92, batch_size=2, output_kind="both")
        labels, probs = np.asarray(labels), np.asarray(probs)
    np.testing.assert_array_equal(labels, np.asarray(reference[0]))
    np.testing.assert_allclose(probs.astype(np.float32), np.asarray(reference[1]).astype(np.float32), atol=2e-3)
    assert caplog.text.count("with 2 tiles per call; going on with 1") == 1
    assert caplog.text.count("with one tile of 92 pixels; going on with tiles of 64") == 1
    assert max(shape[-1] for shape in made[0].calls[-3:]) == 64


def test_out_of_memory_with_the_smallest_tile_is_one_line():
    from fastunet.engine.oom import OOMBackoff

    class Always:
        device, backend, dtype, config = torch.device("cpu"), "torch", "fp32", None

        def predict(self, tiles, output="labels"):
            raise torch.OutOfMemoryError("CUDA out of memory (injected)")

    with pytest.raises(UserError, match="Out of memory on cpu even for one tile of 44 pixels"):
        OOMBackoff(Always(), depth=2).predict(torch.zeros(1, 1, 44, 44))


def test_a_tile_that_cannot_fit_is_refused_before_any_work(tmp_path, capsys, monkeypatch):
    from fastunet.segmentation import memory

    monkeypatch.setattr(memory, "available_bytes", lambda device: 8 * 1024**3)
    img = _rng().random((384, 384)).astype(np.float32)
    src = _zarr(tmp_path / "in.zarr", img, (384, 384))
    code = main(["segment", src, "-o", str(tmp_path / "o.zarr"), "--tile", "4092", "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1, err
    assert "--tile 4092 with --batch-size 2 needs about 25.9 GiB" in err and "8.0 GiB are free" in err
    assert "use --tile " in err and not (tmp_path / "o.zarr").exists()


# ---------------------------------------------------------------- interrupts, SIGTERM
def test_ctrl_c_under_the_triton_interpreter_stops_at_once(tmp_path, model, request):
    """Blocks wait for the interpreter interruptibly: Ctrl-C does not wait for a forward of
    minutes; the block left running is not recorded and resume computes it."""
    from fastunet.segmentation import Segmenter

    data = _rng().normal(size=(2, 32, 32)).astype(np.float32)
    src = _zarr(tmp_path / "in.zarr", data, (1, 32, 32))
    release, finished = threading.Event(), []
    # Ctrl-C as in an interactive shell: a job started in the background by a script inherits
    # SIGINT ignored (POSIX), and then no Ctrl-C would reach the run at all.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    request.addfinalizer(lambda: signal.signal(signal.SIGINT, previous))
    with Segmenter(model, backend="triton", device="cpu", tile=52) as seg:
        net = seg.network
        assert net.interruptible

        def stuck(tiles, output="labels"):
            # Ctrl-C while the interpreter runs, sent to the main thread as a terminal's is
            signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)
            release.wait(60)  # a forward of minutes
            finished.append(True)
            raise RuntimeError("released")

        net.predictor.predict = stuck
        with pytest.raises(KeyboardInterrupt):
            seg.segment(src, tmp_path / "o.zarr", axes="ZYX", progress=False, threads=1)
        assert not finished  # the run stopped while the forward was still going
        release.set()
    assert SegmentationStore(tmp_path / "o.zarr").done() == set()
    out = segment(src, model, tmp_path / "o.zarr", axes="ZYX", tile=52, progress=False, resume=True)
    np.testing.assert_array_equal(out[:], np.asarray(segment(data, model, None, axes="ZYX", tile=52)))


def test_interrupts_held_defers_ctrl_c_to_the_end_of_the_section(request):
    from fastunet.engine.interrupts import interrupts_held

    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    request.addfinalizer(lambda: signal.signal(signal.SIGINT, previous))
    reached = []
    with pytest.raises(KeyboardInterrupt):
        with interrupts_held():
            signal.raise_signal(signal.SIGINT)
            time.sleep(0.05)  # the handler would have run by now
            reached.append("end of section")
    assert reached == ["end of section"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_interrupt_while_the_pool_starts_its_threads_waits_for_every_started_block(monkeypatch, request):
    """Ctrl-C arriving while blocks are submitted (ThreadPoolExecutor.submit starts the worker
    threads) is acted on once all are submitted: every block that started has finished when
    the interrupt reaches the caller, none runs on unwaited (seen in CI: a block cut short at
    interpreter exit)."""
    import types
    from concurrent.futures import ThreadPoolExecutor

    from fastunet.engine import scheduling

    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    request.addfinalizer(lambda: signal.signal(signal.SIGINT, previous))
    started, finished, submitted = [], [], []

    def run_block(job, block):
        started.append(block)
        time.sleep(0.3)
        finished.append(block)
        return {"block": block}

    class InterruptedPool(ThreadPoolExecutor):
        def submit(self, *args, **kwargs):
            future = super().submit(*args, **kwargs)
            submitted.append(args[-1])
            if len(submitted) == 1:
                signal.raise_signal(signal.SIGINT)  # Ctrl-C while the other blocks are submitted
            return future

    monkeypatch.setattr(scheduling, "run_block", run_block)
    monkeypatch.setattr(scheduling, "ThreadPoolExecutor", InterruptedPool)
    blocks = [f"b{i}" for i in range(6)]
    with pytest.raises(KeyboardInterrupt):
        scheduling.execute(types.SimpleNamespace(use_runner=False), blocks, threads=2)
    assert submitted == blocks  # the interrupt waited for the submissions
    assert started and sorted(started) == sorted(finished)  # and for every block that started
    assert len(started) < len(blocks)  # the queued ones were cancelled


_STALL_SECOND_BLOCK = """
import sys, time
from pathlib import Path
from fastunet.engine import scheduling
real, calls, marker = scheduling.run_block, [], Path(sys.argv[1])
def run_block(job, block):
    calls.append(block.name)
    if len(calls) >= 2:  # every block from the second on waits for "go"
        if len(calls) == 2:
            marker.write_text(block.name)
        deadline = time.monotonic() + 60
        while not marker.with_suffix(".go").exists() and time.monotonic() < deadline:
            time.sleep(0.01)
    return real(job, block)
scheduling.run_block = run_block
from fastunet.cli import main
sys.exit(main(sys.argv[2:]))
"""


def test_sigterm_lets_running_blocks_finish_and_exits_143_resumable(tmp_path, model, capsys):
    data = _rng().normal(size=(6, 32, 32)).astype(np.float32)
    src = _zarr(tmp_path / "in.zarr", data, (1, 32, 32))
    out = tmp_path / "o.zarr"
    marker = tmp_path / "stalled"
    argv = ["segment", src, "-o", str(out), "--model", model, "--axes", "ZYX", "--tile", "52", "--block", "1,32,32",
            "--kind", "labels", "--quiet"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-c", _STALL_SECOND_BLOCK, str(marker), *argv], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert marker.exists(), proc.communicate()
    proc.send_signal(signal.SIGTERM)  # while the second (and third) block run
    time.sleep(0.2)
    marker.with_suffix(".go").touch()  # ... which then finish
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    assert "terminated (SIGTERM)" in err and "run the same command with --resume" in err and "Traceback" not in err
    done = SegmentationStore(out).done()
    assert marker.read_text() in done and len(done) <= 3  # the running blocks finished; the queued ones wait
    assert main([*argv, "--resume"]) == 0
    capsys.readouterr()
    np.testing.assert_array_equal(zarr.open_group(str(out))["labels"][:],
                                  np.asarray(segment(data, model, None, axes="ZYX", tile=52, output_kind="labels")))
