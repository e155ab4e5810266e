"""``fastunet segment`` on the command line: end to end, bad input, kill -9 and --resume."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
import zarr

from fastunet import Normalization, ReferenceUNet, UNetConfig, save_model, segment
from fastunet.cli import main
from fastunet.engine import gpu_worker_specs, parse_gpus
from fastunet.errors import UserError

REPO = Path(__file__).resolve().parents[1]


def _rng():
    return np.random.default_rng(torch.initial_seed())


def _model(path, in_channels=1, depth=2):
    net = ReferenceUNet(UNetConfig(in_channels=in_channels, base_channels=4, depth=depth))
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d)):
                m.bias.normal_(0.0, 0.1)
    return save_model(path, net, Normalization(mode="meanstd"))


@pytest.fixture
def model(tmp_path):
    return str(_model(tmp_path / "m.safetensors"))


def _zarr(path, data, chunks):
    arr = zarr.create_array(str(path), shape=data.shape, chunks=chunks, dtype=data.dtype)
    arr[:] = data
    return str(path)


def _run(args, capsys):
    code = main(["segment", *map(str, args)])
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_zarr_in_zarr_out_with_summary(tmp_path, model, capsys):
    vol = _rng().normal(size=(2, 40, 36)).astype(np.float32)
    src = _zarr(tmp_path / "in.zarr", vol, (1, 16, 16))
    code, out, err = _run([src, "-o", tmp_path / "out.zarr", "--model", model, "--axes", "ZYX", "--tile", "52",
                           "--kind", "both", "--zarr-format", "2", "--device", "cpu", "--backend", "torch",
                           "--dtype", "fp32", "--batch-size", "3"], capsys)
    assert code == 0, err
    assert "segmented" in out and "Mpx/s on cpu (torch, fp32, tile 52x52, batch 3" in out
    root = zarr.open_group(str(tmp_path / "out.zarr"), mode="r")
    assert root.metadata.zarr_format == 2 and root.attrs["fastunet"]["complete"]
    labels, probs = segment(src, model, None, axes="ZYX", tile=52, output_kind="both", dtype="fp32")
    np.testing.assert_array_equal(root["labels"][:], np.asarray(labels))
    np.testing.assert_array_equal(root["probs"][:], np.asarray(probs))
    code, out, err = _run([src, "-o", tmp_path / "out.zarr", "--model", model, "--axes", "ZYX", "--tile", "52",
                           "--kind", "both", "--resume", "--quiet"], capsys)
    assert code == 0 and out == "" and err == ""  # already complete: nothing recomputed, nothing said
    code, _, err = _run([src, "-o", tmp_path / "out.zarr", "--model", model, "--axes", "ZYX", "--resume"], capsys)
    assert code == 2 and "Cannot resume" in err and "--kind both" in err


def test_cli_tiff_output(tmp_path, model, capsys):
    img = _rng().integers(0, 255, size=(30, 45)).astype(np.uint8)
    tifffile.imwrite(tmp_path / "in.tif", img)
    code, _, err = _run([tmp_path / "in.tif", "-o", tmp_path / "out.tif", "--model", model, "--quiet"], capsys)
    assert code == 0, err
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "out.tif"), np.asarray(segment(img, model, None)))


def _bad_inputs(tmp_path, model):
    """(name, argv, expected message fragment) for every bad input of the issue."""
    good = _zarr(tmp_path / "good.zarr", np.zeros((20, 20), np.float32), (10, 10))
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "empty").mkdir()
    zero = zarr.create_array(str(tmp_path / "zero.zarr"), shape=(0, 20), chunks=(1, 10), dtype="float32")
    boolean = zarr.create_array(str(tmp_path / "bool.zarr"), shape=(20, 20), chunks=(10, 10), dtype="bool")
    cplx = zarr.create_array(str(tmp_path / "complex.zarr"), shape=(20, 20), chunks=(10, 10), dtype="complex64")
    stack = _zarr(tmp_path / "stack.zarr", np.zeros((2, 20, 20), np.float32), (1, 10, 10))
    two = str(_model(tmp_path / "two.safetensors", in_channels=2))
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(Path(model).read_bytes()[:300])
    pickled = tmp_path / "model.pt"
    torch.save({"w": torch.zeros(1)}, pickled)
    (tmp_path / "exists.zarr").mkdir()
    (tmp_path / "exists.zarr" / "x").write_text("user data")
    (tmp_path / "afile").write_text("")
    del zero, boolean, cplx
    m = ["--model", model]
    o = ["-o", str(tmp_path / "o.zarr")]

    def _foreign_tiff(folder):  # a TIFF that no fastunet run wrote: --resume does not take it as finished
        tifffile.imwrite(folder / "foreign.tif", np.zeros((4, 4), np.uint8))
        return folder / "foreign.tif"

    return [
        ("missing path", [tmp_path / "nope.zarr", *o, *m], "Input not found"),
        ("not an array (text file)", [tmp_path / "notes.txt", *o, *m], "neither a TIFF file nor a zarr store"),
        ("not an array (folder)", [tmp_path / "empty", *o, *m], "not a zarr array or group"),
        ("wrong number of axes", [good, *o, *m, "--axes", "ZYX"], "name 3 axes but"),
        ("3-D without axes", [stack, *o, *m], "--axes"),
        ("wrong channels", [stack, *o, "--model", two, "--axes", "ZYX"], "expects 2 input channel(s) but the input has 1"),
        ("zero-size axis", [tmp_path / "zero.zarr", *o, *m], "is empty"),
        ("bool dtype", [tmp_path / "bool.zarr", *o, *m], "unsupported data type bool"),
        ("complex dtype", [tmp_path / "complex.zarr", *o, *m], "unsupported data type complex64"),
        ("invalid tile", [good, *o, *m, "--tile", "50"], "Nearest valid: 48, 52"),
        ("3D tile for a 2D model", [good, *o, *m, "--tile", "30,52,56"], "one edge for this 2D network"),
        ("tile not a number", [good, *o, *m, "--tile", "52x52"], "--tile expects an edge in pixels"),
        ("tile too small", [good, *o, "--model", str(_model(tmp_path / "d4.safetensors", depth=4)), "--tile", "188"],
         "smallest usable tile is 204"),
        ("output exists", [good, "-o", tmp_path / "exists.zarr", *m], "already exists; pass --overwrite"),
        ("overwrite user data", [good, "-o", tmp_path / "exists.zarr", *m, "--overwrite"], "not a fastunet output"),
        ("output is the input", [good, "-o", good, *m], "is the input"),
        ("output inside the input", [good, "-o", Path(good) / "sub.zarr", *m], "inside the input"),
        ("output folder missing", [good, "-o", tmp_path / "no" / "o.zarr", *m], "does not exist"),
        ("output parent is a file", [good, "-o", tmp_path / "afile" / "o.zarr", *m], "is not a folder"),
        ("broken model", [good, *o, "--model", broken], "truncated"),
        ("pickled model", [good, *o, "--model", pickled], "not a safetensors file"),
        ("missing model", [good, *o, "--model", tmp_path / "none.safetensors"], "does not exist"),
        ("gpus without CUDA", [good, *o, *m, "--gpus", "0,1"], "CUDA GPUs this machine does not have"),
        ("bad gpus", [good, *o, *m, "--gpus", "a,b"], "distinct GPU indices"),
        ("zero workers", [good, *o, *m, "--workers", "0"], "--workers expects"),
        ("bad batch size", [good, *o, *m, "--batch-size", "0"], "--batch-size expects"),
        ("bad block", [good, *o, *m, "--block", "15,10"], "multiple of the chunks"),
        ("TIFF resume of another file", [good, "-o", _foreign_tiff(tmp_path), *m, "--resume"],
         "not a fastunet output"),
        ("unknown device", [good, *o, *m, "--device", "tpu"], "device"),
    ]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU messages")
def test_every_bad_input_gets_one_readable_line(tmp_path, model, capsys):
    for name, argv, fragment in _bad_inputs(tmp_path, model):
        code, out, err = _run(argv, capsys)
        assert code == 2, (name, out, err)
        assert "Traceback" not in err and err.count("\n") == 1, (name, err)
        assert err.startswith("fastunet segment: error: ") and fragment in err, (name, err)
        assert not (tmp_path / "o.zarr").exists() and not (tmp_path / "o.tif").exists(), name
    assert (tmp_path / "exists.zarr" / "x").read_text() == "user data"


def test_nan_input_warns_and_says_what_is_done(tmp_path, model, capsys):
    img = _rng().normal(size=(24, 24)).astype(np.float32)
    img[5, 5] = np.nan
    src = _zarr(tmp_path / "nan.zarr", img, (12, 12))
    code, out, err = _run([src, "-o", tmp_path / "o.zarr", "--model", model], capsys)
    assert code == 0
    assert "warning: 1 NaN/Inf values in the input: ignored by the normalization statistics and set to 0" in err
    assert "1 NaN/Inf input values set to 0" in out


def test_argument_conflicts_exit_2(tmp_path, model, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["segment", "x.zarr", "-o", str(tmp_path / "o.zarr"), "--workers", "2", "--gpus", "0"])
    assert exc.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err
    with pytest.raises(UserError, match="exclude each other"):
        segment(np.zeros((20, 20), np.float32), model, tmp_path / "o.zarr", workers=2, scheduler="tcp://x:1")


def test_gpu_argument_handling():
    assert parse_gpus("0,1") == ("0", "1") and parse_gpus(" 2 ") == ("2",) and parse_gpus([0, 3]) == ("0", "3")
    for bad in ("", "0,0", "cuda:0", "0;1", None, True):
        with pytest.raises(UserError):
            parse_gpus(bad)
    specs = gpu_worker_specs("1,0", threads_per_worker=3)
    assert list(specs) == ["gpu-1", "gpu-0"]
    assert specs["gpu-1"]["options"] == {"nthreads": 3, "env": {"CUDA_VISIBLE_DEVICES": "1"}}


def test_missing_default_model_is_a_clear_error(tmp_path, capsys, monkeypatch):
    from fastunet import modelfile

    monkeypatch.setattr(modelfile, "DEFAULT_MODEL", tmp_path / "nothing.safetensors")
    src = _zarr(tmp_path / "in.zarr", np.zeros((20, 20), np.float32), (10, 10))
    code, _, err = _run([src, "-o", tmp_path / "o.zarr"], capsys)
    assert code == 2 and "pass a model file, e.g. --model" in err


def test_import_fastunet_stays_light():
    code = "import sys, fastunet; fastunet.segment; print(sorted(m for m in ('dask', 'zarr', 'tifffile', 'distributed') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.slow
def test_sigkill_mid_run_then_resume_gives_the_uninterrupted_output(tmp_path, model):
    vol = _rng().normal(size=(6, 64, 64)).astype(np.float32)
    src = _zarr(tmp_path / "in.zarr", vol, (1, 16, 16))
    out = tmp_path / "out.zarr"
    # 96 blocks of one 16x16 chunk, one 56 -> 16 tile each: slow enough to be killed mid-way.
    argv = [sys.executable, "-m", "fastunet", "segment", src, "-o", str(out), "--model", model, "--axes", "ZYX",
            "--tile", "56", "--block", "1,16,16", "--device", "cpu", "--quiet"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    done_dir = out / "_fastunet_done"
    deadline = time.monotonic() + 120
    recorded = 0
    while time.monotonic() < deadline and proc.poll() is None:
        recorded = len(list(done_dir.glob("*.done"))) if done_dir.is_dir() else 0
        if recorded >= 8:
            break
        time.sleep(0.005)
    assert proc.poll() is None, f"the run ended before it could be killed: {proc.communicate()}"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    meta = zarr.open_group(str(out), mode="r").attrs["fastunet"]
    assert meta["complete"] is False
    recorded = len(list(done_dir.glob("*.done")))
    assert 8 <= recorded < 96
    # Without --resume (or --overwrite) the partial output is refused, not silently reused.
    again = subprocess.run(argv, env=env, capture_output=True, text=True)
    assert again.returncode == 2 and "--resume" in again.stderr and "Traceback" not in again.stderr
    resumed = subprocess.run([*argv[:-1], "--resume"], env=env, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert f"segmented {96 - recorded} of 96 blocks, {recorded} skipped (resume)" in resumed.stdout
    root = zarr.open_group(str(out), mode="r")
    assert root.attrs["fastunet"]["complete"] is True and not done_dir.exists()
    uninterrupted = segment(src, model, tmp_path / "ref.zarr", axes="ZYX", tile=56, block=(1, 16, 16), progress=False)
    np.testing.assert_array_equal(root["instances"][:], uninterrupted[:])


def _fixed_model(path):
    """A model whose normalization reads nothing (mode fixed): block tasks are the first to
    read the input, so a damaged chunk fails mid-run rather than in the statistics."""
    net = ReferenceUNet(UNetConfig(base_channels=4, depth=2))
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d)):
                m.bias.normal_(0.0, 0.1)
    return str(save_model(path, net, Normalization(mode="fixed", offset=0.0, scale=1.0)))


def _fail_after(monkeypatch, n):
    """Make the (n+1)-th block task raise, as a kill would stop the run: n blocks recorded."""
    from fastunet.engine import scheduling as engine

    real, calls = engine.run_block, []

    def run_block(job, block):
        calls.append(block.name)
        if len(calls) > n:
            raise RuntimeError("injected failure")
        return real(job, block)

    monkeypatch.setattr(engine, "run_block", run_block)
    return calls


def test_resume_refuses_another_input(tmp_path, model, capsys, monkeypatch):
    shape = (2, 48, 48)
    rng = _rng()
    a = _zarr(tmp_path / "a.zarr", rng.normal(size=shape).astype(np.float32), (1, 16, 16))
    b = _zarr(tmp_path / "b.zarr", rng.normal(size=shape).astype(np.float32), (1, 16, 16))
    out = tmp_path / "o.zarr"
    common = ["-o", out, "--model", model, "--axes", "ZYX", "--tile", "52", "--block", "1,16,16", "--quiet"]
    with monkeypatch.context() as m:  # an interrupted run on a.zarr: 5 of 18 blocks recorded
        _fail_after(m, 5)
        with pytest.raises(RuntimeError, match="injected"):
            main(["segment", a, *map(str, common)])
    capsys.readouterr()
    meta = zarr.open_group(str(out), mode="r").attrs["fastunet"]
    assert meta["complete"] is False and 5 <= len(list((out / "_fastunet_done").glob("*.done"))) < 18
    # Same shape, other data, other path: refused, nothing written.
    before = sorted(p.name for p in (out / "_fastunet_done").glob("*.done"))
    code, _, err = _run([b, *common, "--resume"], capsys)
    assert code == 2 and err.count("\n") == 1, err
    assert "Cannot resume" in err and "a.zarr" in err and "b.zarr" in err and "mix two inputs" in err
    assert sorted(p.name for p in (out / "_fastunet_done").glob("*.done")) == before
    # Same path, values changed in place since: refused too.
    arr = zarr.open_array(a, mode="r+")
    original = arr[:]
    times = {p: p.stat().st_mtime_ns for p in Path(a).rglob("*") if p.is_file()}
    arr[:] = original + 1
    code, _, err = _run([a, *common, "--resume"], capsys)
    assert code == 2 and "values differ" in err, err
    arr[:] = original  # restored as from a backup that keeps the files' times (cp -p): the input it was
    for p, t in times.items():
        os.utime(p, ns=(t, t))
    # The original input: resumes, and equals an uninterrupted run.
    code, out_text, err = _run([a, *[c for c in common if c != "--quiet"], "--resume"], capsys)
    assert code == 0, err
    assert "skipped (resume)" in out_text
    ref = segment(a, model, tmp_path / "ref.zarr", axes="ZYX", tile=52, block=(1, 16, 16), progress=False)
    np.testing.assert_array_equal(zarr.open_group(str(out), mode="r")["instances"][:], ref[:])
    # A complete output is refused for another input as well (the "already complete" return).
    code, _, err = _run([b, *common, "--resume"], capsys)
    assert code == 2 and "mix two inputs" in err, err
    # The same input moved elsewhere: resumed with a warning (its content matches).
    os.rename(a, tmp_path / "moved.zarr")
    code, _, err = _run([tmp_path / "moved.zarr", *common, "--resume"], capsys)
    assert code == 0 and err.count("moved or copied") == 1, err


def test_resume_refuses_a_changed_tiff_and_another_array(tmp_path, model, capsys):
    img = _rng().integers(0, 255, size=(40, 40)).astype(np.uint8)
    tifffile.imwrite(tmp_path / "in.tif", img)
    out = tmp_path / "o.zarr"
    assert _run([tmp_path / "in.tif", "-o", out, "--model", model, "--quiet"], capsys)[0] == 0
    assert _run([tmp_path / "in.tif", "-o", out, "--model", model, "--resume", "--quiet"], capsys)[0] == 0
    os.utime(tmp_path / "in.tif", ns=(time.time_ns(), time.time_ns() + 10**9))  # touched (or copied)
    assert _run([tmp_path / "in.tif", "-o", out, "--model", model, "--resume", "--quiet"], capsys)[0] == 0
    tifffile.imwrite(tmp_path / "in.tif", img ^ 1)  # rewritten with other values, same size
    code, _, err = _run([tmp_path / "in.tif", "-o", out, "--model", model, "--resume"], capsys)
    assert code == 2 and "values differ" in err, err
    tifffile.imwrite(tmp_path / "in.tif", np.concatenate([img, img]))  # another size: another shape
    code, _, err = _run([tmp_path / "in.tif", "-o", out, "--model", model, "--resume"], capsys)
    assert code == 2 and "Cannot resume" in err, err
    # In memory: another array of the same shape is refused.
    a = _rng().normal(size=(40, 40)).astype(np.float32)
    segment(a, model, tmp_path / "mem.zarr", progress=False)
    segment(a.copy(), model, tmp_path / "mem.zarr", resume=True, progress=False)
    with pytest.raises(UserError, match="values differ"):
        segment(a + 1, model, tmp_path / "mem.zarr", resume=True, progress=False)


def test_unreachable_scheduler_leaves_no_output(tmp_path, model, capsys, monkeypatch):
    from fastunet.engine import scheduling as engine

    monkeypatch.setattr(engine, "SCHEDULER_TIMEOUT", 1.0)
    src = _zarr(tmp_path / "good.zarr", _rng().normal(size=(20, 20)).astype(np.float32), (10, 10))
    out = tmp_path / "o.zarr"
    code, _, err = _run([src, "-o", out, "--model", model, "--scheduler", "tcp://127.0.0.1:1"], capsys)
    assert code == 2 and err.count("\n") == 1 and "Cannot reach the dask scheduler" in err, err
    assert not out.exists()
    code, _, err = _run([src, "-o", out, "--model", model, "--quiet"], capsys)  # no --overwrite needed
    assert code == 0, err


def test_failure_before_any_block_removes_only_what_this_run_created(tmp_path, model, capsys, monkeypatch):
    from fastunet.segmentation import Segmenter

    src = _zarr(tmp_path / "good.zarr", _rng().normal(size=(2, 32, 32)).astype(np.float32), (1, 16, 16))
    out = tmp_path / "o.zarr"
    argv = [src, "-o", out, "--model", model, "--axes", "ZYX", "--tile", "52", "--block", "1,16,16", "--quiet"]

    def broken_job(*args, **kwargs):
        raise UserError("injected setup failure")

    with monkeypatch.context() as m:  # fails after the output was created, before any block
        m.setattr(Segmenter, "_job", broken_job)
        code, _, err = _run(argv, capsys)
        assert code == 2 and "injected setup failure" in err
        assert not out.exists()
    with monkeypatch.context() as m:  # an interrupted run with recorded blocks: kept
        _fail_after(m, 2)
        with pytest.raises(RuntimeError, match="injected"):
            main(["segment", *map(str, argv)])
    done = sorted(p.name for p in (out / "_fastunet_done").glob("*.done"))
    assert len(done) >= 2
    with monkeypatch.context() as m:  # a resume that fails at setup never removes the earlier run's output
        m.setattr(Segmenter, "_job", broken_job)
        code, _, err = _run([*argv, "--resume"], capsys)
        assert code == 2 and "injected setup failure" in err
    assert sorted(p.name for p in (out / "_fastunet_done").glob("*.done")) == done
    assert _run([*argv, "--resume"], capsys)[0] == 0


def test_unwritable_output_folder_is_one_line(tmp_path, model, capsys, deny_output_writes):
    """Independent of the user id (root writes into read-only folders): the write fails."""
    src = _zarr(tmp_path / "good.zarr", np.zeros((20, 20), np.float32), (10, 10))
    code, out, err = _run([src, "-o", tmp_path / "o.zarr", "--model", model], capsys)
    assert code == 2 and out == "" and err.count("\n") == 1, err
    assert err == (f"fastunet segment: error: Cannot write to {str(tmp_path)!r} (Permission denied); choose a "
                   "writable place for the output.\n")
    assert not (tmp_path / "o.zarr").exists()


def _damage_chunk(path):
    """Garbage bytes in the first chunk file of a zarr v3 array; returns its path."""
    chunk = sorted(p for p in Path(path, "c").rglob("*") if p.is_file())[0]
    chunk.write_bytes(os.urandom(64))
    return chunk


def test_damaged_input_chunk_is_one_line_naming_file_and_region(tmp_path, model, capsys):
    src = _zarr(tmp_path / "in.zarr", _rng().normal(size=(2, 32, 32)).astype(np.float32), (1, 16, 16))
    chunk = _damage_chunk(src)
    code, out, err = _run([src, "-o", tmp_path / "o.zarr", "--model", model, "--axes", "ZYX"], capsys)
    assert code == 2 and out == "" and err.count("\n") == 1 and "Traceback" not in err, err
    assert f"Cannot read the zarr array {src!r} at Z " in err and "Y 0:" in err, err
    assert f"the damaged chunk is the file {str(chunk)!r}" in err
    assert not (tmp_path / "o.zarr").exists()


def test_damaged_chunk_mid_run_leaves_a_resumable_output(tmp_path, capsys, monkeypatch):
    from fastunet.engine import scheduling as engine
    from fastunet.io.chunk_cache import ChunkCache

    fixed = _fixed_model(tmp_path / "fixed.safetensors")
    vol = _rng().normal(size=(2, 48, 48)).astype(np.float32)
    src = _zarr(tmp_path / "in.zarr", vol, (1, 16, 16))
    out = tmp_path / "o.zarr"
    argv = [src, "-o", out, "--model", fixed, "--axes", "ZYX", "--tile", "52", "--block", "1,16,16", "--quiet"]
    files = sorted(p for p in Path(src, "c").rglob("*") if p.is_file())
    saved = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in files}
    real, calls = engine.run_block, []

    def run_block(job, block):  # the input gets damaged (every chunk) as the 5th block starts
        calls.append(block.name)
        if len(calls) == 5:
            for p in files:
                p.write_bytes(b"garbage" * 9)
        return real(job, block)

    monkeypatch.setattr(engine, "run_block", run_block)
    # Without the chunk cache: this small input is otherwise decoded whole before the first block
    # (statistics, fingerprint), and the blocks never read the damaged files.
    monkeypatch.setattr(ChunkCache, "useful", property(lambda self: False))
    code, _, err = _run(argv, capsys)
    assert code == 2 and err.count("\n") == 1 and "Cannot read the zarr array" in err and "damaged chunk" in err
    meta = zarr.open_group(str(out), mode="r").attrs["fastunet"]
    assert meta["complete"] is False
    done = list((out / "_fastunet_done").glob("*.done"))
    assert 3 <= len(done) < 18  # 2 threads: blocks 1-3 at least finished before the damage
    for p, (data, mtime) in saved.items():  # restored with the files' times (cp -p): the input it was
        p.write_bytes(data)
        os.utime(p, ns=(mtime, mtime))
    monkeypatch.setattr(engine, "run_block", real)
    code, text, err = _run([*argv[:-1], "--resume"], capsys)
    assert code == 0, err
    assert f"{len(done)} skipped (resume)" in text
    ref = segment(src, fixed, tmp_path / "ref.zarr", axes="ZYX", tile=52, block=(1, 16, 16), progress=False)
    np.testing.assert_array_equal(zarr.open_group(str(out), mode="r")["instances"][:], ref[:])


def test_all_nan_input_is_refused(tmp_path, model, capsys):
    src = _zarr(tmp_path / "nan.zarr", np.full((24, 24), np.nan, np.float32), (12, 12))
    code, _, err = _run([src, "-o", tmp_path / "o.zarr", "--model", model], capsys)
    assert code == 2 and err.count("\n") == 1 and "no finite value in the input" in err.lower(), err
    assert not (tmp_path / "o.zarr").exists()


def test_tiff_both_refuses_an_existing_probs_file_before_computing(tmp_path, model, capsys, monkeypatch):
    from fastunet import engine, normalization

    img = _rng().integers(0, 255, size=(30, 30)).astype(np.uint8)
    tifffile.imwrite(tmp_path / "in.tif", img)
    (tmp_path / "out_probs.tif").write_bytes(b"someone's file")

    def no_compute(*args, **kwargs):
        raise AssertionError("computed before the output check")

    monkeypatch.setattr(engine, "execute", no_compute)
    monkeypatch.setattr(normalization, "normalization_stats", no_compute)
    argv = [tmp_path / "in.tif", "-o", tmp_path / "out.tif", "--model", model, "--kind", "both"]
    code, _, err = _run(argv, capsys)
    assert code == 2 and "out_probs.tif" in err and "already exists; pass --overwrite" in err, err
    code, _, err = _run([*argv, "--overwrite"], capsys)
    assert code == 2 and "not a fastunet output" in err, err
    assert (tmp_path / "out_probs.tif").read_bytes() == b"someone's file"
    assert not (tmp_path / "out.tif").exists()


def test_rgb_guess_suggests_z_axes(tmp_path, model, capsys):
    img = _rng().integers(0, 4000, size=(3, 30, 30)).astype(np.uint16)
    tifffile.imwrite(tmp_path / "rgb.tif", img, photometric="rgb", planarconfig="separate")  # what tifffile guesses
    tifffile.imwrite(tmp_path / "ij.tif", img, imagej=True, metadata={"axes": "CYX"})  # channels in metadata
    code, _, err = _run([tmp_path / "rgb.tif", "-o", tmp_path / "o.zarr", "--model", model], capsys)
    assert code == 2 and "use a model made for 3 channel(s)" in err and "--axes ZYX" in err, err
    code, _, err = _run([tmp_path / "ij.tif", "-o", tmp_path / "o.zarr", "--model", model], capsys)
    assert code == 2 and "use a model made for 3 channel(s)" in err and "--axes ZYX" not in err, err
    code, _, err = _run([tmp_path / "rgb.tif", "-o", tmp_path / "o.zarr", "--model", model, "--axes", "ZYX",
                         "--quiet"], capsys)
    assert code == 0, err


def test_block_of_the_wrong_length_names_the_option(tmp_path, model, capsys):
    src = _zarr(tmp_path / "good.zarr", np.zeros((30, 30), np.float32), (10, 10))
    code, _, err = _run([src, "-o", tmp_path / "o.zarr", "--model", model, "--block", "1,30,30"], capsys)
    assert code == 2 and "--block 1,30,30 has 3 entries but the image is 2-D" in err and "--block 30,30" in err, err


def test_ctrl_c_before_any_block_keeps_the_output_to_resume(tmp_path, model, capsys, monkeypatch):
    """An interrupt is no failure to clean up after: the output stays and --resume continues."""
    import fastunet.engine

    src = _zarr(tmp_path / "good.zarr", _rng().normal(size=(2, 32, 32)).astype(np.float32), (1, 16, 16))
    out = tmp_path / "o.zarr"
    argv = [src, "-o", out, "--model", model, "--axes", "ZYX", "--tile", "52", "--block", "1,16,16", "--quiet"]

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(fastunet.engine, "execute", interrupted)
        code, _, err = _run(argv, capsys)
    assert code == 130 and "run the same command with --resume" in err, err
    assert out.exists()
    code, _, err = _run([*argv, "--resume"], capsys)
    assert code == 0, err
    reference = tmp_path / "ref.zarr"
    assert _run([src, "-o", reference, *argv[3:]], capsys)[0] == 0
    assert np.array_equal(zarr.open_group(str(out))["instances"][:], zarr.open_group(str(reference))["instances"][:])


def test_second_ctrl_c_still_waits_for_running_blocks():
    from fastunet.engine.scheduling import _shutdown_uninterrupted

    class Pool:
        calls = 0

        def shutdown(self, wait, cancel_futures):
            Pool.calls += 1
            if Pool.calls == 1:
                raise KeyboardInterrupt  # the user pressed Ctrl-C again during the wait

    with pytest.raises(KeyboardInterrupt):
        _shutdown_uninterrupted(Pool())
    assert Pool.calls == 2  # waited again before letting the interrupt through
