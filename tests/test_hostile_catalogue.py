"""Issue 22's hostile catalogue: every case a hostile, careless or unlucky user tried, as the
command, the exit status and message it must get, with the user's files hashed before and after;
grouped by class, and for each class a test that the shared rule is what catches its cases (the
path rule, fastunet.paths.check_output_file; the flag validator, fastunet.cli.validate; the
foreign-flag table; the input checks; the signal handling of fastunet.cli.signals).

(Earlier catalogues: tests/test_hostile_inputs.py, test_segment_cli.py, test_faults.py.)
"""

import errno
import hashlib
import json
import os
import re
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
from fault_helpers import balanced_net, small_model

from fastunet import Normalization, segment
from fastunet.cli import build_parser, main, to_flags
from fastunet.errors import UserError
from fastunet.synthetic import synthetic_nuclei

REPO = Path(__file__).resolve().parents[1]
M = ["--model", "m.safetensors"]
TINY = ["--iterations", "2", "--base-channels", "4", "--depth", "2", "--tile", "92", "--val-every", "100"]


@pytest.fixture
def user(tmp_path, monkeypatch):
    """A user's folder, the working directory: an image, a model, a report and notes of their
    own, images/ and labels/ for training, and d/ holding their own volume.zarr."""
    monkeypatch.chdir(tmp_path)
    rng = np.random.default_rng(torch.initial_seed())
    tifffile.imwrite("img.tif", rng.integers(0, 255, (40, 44), dtype=np.uint8))
    small_model(tmp_path / "m.safetensors")
    Path("report.json").write_text('{"mine": 1}\n')
    Path("notes.json").write_text('{"notes": 1}\n')
    for folder in ("images", "labels"):
        Path(folder).mkdir()
    image, labels = synthetic_nuclei((96, 96), seed=1, dtype="uint16")
    tifffile.imwrite("images/n0.tif", image)
    tifffile.imwrite("labels/n0.tif", labels.astype(np.uint16))
    zarr.create_array("d/volume.zarr", shape=(2, 8, 8), chunks=(1, 8, 8), dtype="uint8")[:] = 7
    return tmp_path


def _hashes(root: Path) -> dict:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _cli(argv, capsys):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def _refused(user, capsys, argv, pattern, code=2):
    """Run ``argv``: it must end with ``code`` and one line matching ``pattern``, no traceback,
    and leave every file of the user's folder as it was and no new one."""
    before = _hashes(user)
    got, _, err = _cli(argv, capsys)
    assert got == code and err.count("\n") == 1 and "Traceback" not in err, (argv, err)
    assert re.search(pattern, err), (argv, err)
    assert _hashes(user) == before, argv
    return err


# ----------------------------------------------------------------- class 1: written files
FILE_CASES = [
    ("--json onto the input image", ["segment", "img.tif", "-o", "o.zarr", *M, "--json", "img.tif"],
     r"--json file 'img.tif' is the input .*never written"),
    ("--json onto the model", ["segment", "img.tif", "-o", "o.zarr", *M, "--json", "m.safetensors"],
     r"is the model file .*never written"),
    ("--json onto an existing report", ["segment", "img.tif", "-o", "o.zarr", *M, "--json", "report.json"],
     r"'report.json' already exists; pass --overwrite"),
    ("--json onto the TIFF output", ["segment", "img.tif", "-o", "o.tif", *M, "--json", "o.tif"],
     r"'o.tif' is also the --json file"),
    ("--log-file onto the input", ["segment", "img.tif", "-o", "o.zarr", *M, "--log-file", "img.tif"],
     r"--log-file 'img.tif' is the input"),
    ("--log-file onto a user's file", ["segment", "img.tif", "-o", "o.zarr", *M, "--log-file", "notes.json"],
     r"'notes.json' already exists"),
    ("info --log-file onto the model", ["info", "m.safetensors", "--log-file", "m.safetensors"],
     r"is the model file"),
    ("train --json onto a label image", ["train", "images", "labels", "-o", "t.safetensors", *TINY, "--json",
                                         "labels/n0.tif"], r"is inside the input .*labels"),
    ("train --json onto the trained model", ["train", "images", "labels", "-o", "t.safetensors", *TINY,
                                             "--json", "t.safetensors"], r"is also the --json file"),
    ("train --json onto the user's notes", ["train", "images", "labels", "-o", "t.safetensors", *TINY, "--json",
                                            "notes.json"], r"'notes.json' already exists"),
    ("evaluate --json inside the labels", ["evaluate", "images", "labels", *M, "--json", "labels/s.json"],
     r"is inside the input"),
    ("demo over the user's volume.zarr", ["demo", "-o", "d", "--shape", "1,64,64", "--overwrite"],
     r"holds files the demo did not write \(volume.zarr\)"),
    ("--output-name out of --output-dir", ["segment", "img.tif", "--output-dir", "seg", "--output-name",
                                           "../../{stem}.zarr", *M], r"lies outside --output-dir 'seg'"),
    ("bench --out onto an image", ["bench", "--only", "S1", "--out", "img.tif"], r"is a file, and a folder goes"),
    ("bench --out in /proc", ["bench", "--only", "S1", "--out", "/proc/fastunet-x"], r"Cannot write to '/proc'"),
]


@pytest.mark.parametrize("name, argv, pattern", FILE_CASES, ids=[c[0] for c in FILE_CASES])
def test_written_files(user, capsys, name, argv, pattern):
    _refused(user, capsys, argv, pattern)


def _recording(monkeypatch, *targets):
    """Wrap the functions ``(module, name)`` so that what they raise is recorded."""
    raised = []
    for module, attr in targets:
        real = getattr(module, attr)

        def wrapper(*args, _real=real, **kwargs):
            try:
                return _real(*args, **kwargs)
            except UserError as exc:
                raised.append(str(exc))
                raise

        monkeypatch.setattr(module, attr, wrapper)
    return raised


def test_the_path_rule_catches_every_written_file_case(user, capsys, monkeypatch):
    """Each refusal of class 1 is raised by the one rule, fastunet.paths.check_output_file."""
    import fastunet.io.outputs
    import fastunet.paths

    raised = _recording(monkeypatch, (fastunet.paths, "check_output_file"),
                        (fastunet.io.outputs, "check_output_file"))
    for name, argv, _ in FILE_CASES:
        raised.clear()
        code, _, err = _cli(argv, capsys)
        args = build_parser().parse_args(argv)
        assert code == 2 and raised, name
        assert err.strip().endswith(to_flags(raised[-1], args)), (name, err, raised)


# ---------------------------------------------------------------------- class 2: flags
FLAG_CASES = [
    ("--label-name with ..", ["segment", "img.tif", "-o", "o.ome.zarr", *M, "--label-name", "../../evil"],
     r"--label-name expects a plain name"),
    ("a template with a bad format code", ["segment", "img.tif", "-o", "seg/{index:s}.zarr", *M],
     r"Unknown format code 's'"),
    ("a scheduler that is no address", ["segment", "img.tif", "-o", "o.zarr", *M, "--scheduler", "not a url"],
     r"--scheduler expects a dask scheduler's address"),
    ("evaluate --seed -1", ["evaluate", "--synthetic", "1", "--seed", "-1", *M], r"--seed expects a whole number"),
    ("demo --seed -1", ["demo", "-o", "dd", "--shape", "1,64,64", "--seed", "-1"], r"--seed expects a whole number"),
    ("train on images as labels", ["train", "images", "images", "-o", "t.safetensors", *TINY],
     r"The labels 'images' are the images"),
    ("evaluate images as labels", ["evaluate", "images", "./images", *M], r"are the images"),
    ("a demo no machine holds", ["demo", "-o", "dd", "--shape", "64,65536,65536"],
     r"needs more memory than is free .*: 64 x 65536 x 65536 voxels: about .* GB of memory, .* on disk .*--shape 8,1024,1024"),
]


@pytest.mark.parametrize("name, argv, pattern", FLAG_CASES, ids=[c[0] for c in FLAG_CASES])
def test_flags(user, capsys, name, argv, pattern):
    _refused(user, capsys, argv, pattern)
    assert not Path("dd").exists() and not Path("o.zarr").exists()


def test_the_flag_validator_catches_every_flag_case(user, capsys):
    """Each refusal of class 2 is the one validator's, fastunet.cli.validate.validate_flags."""
    from fastunet.cli.validate import validate_flags

    for name, argv, _ in FLAG_CASES:
        args = build_parser().parse_args(argv)
        with pytest.raises(UserError) as exc:
            validate_flags(args)
        _, _, err = _cli(argv, capsys)
        assert err.strip().endswith(to_flags(str(exc.value), args)), (name, err)


FOREIGN = [("--use_gpu", "--device"), ("--diameter", "--object-size"), ("--savedir", "--output-dir"),
           ("-i", "fastunet segment IMAGE"), ("--chan", "--channel"), ("--pretrained_model", "--model"),
           ("--save_tif", "-o out.tif"), ("--n_tiles", "--tile")]


def test_the_library_checks_a_scheduler_address_before_any_work(user):
    """segment(scheduler=...) refuses what is no address with one line naming scheduler= (the
    check the CLI's --scheduler goes through), not distributed's error when joining."""
    image = np.zeros((64, 64), np.uint8)
    for address in ("not a url", "tcp://host", "http://host:8786", "tcp://host:0"):
        with pytest.raises(ValueError, match=r"^scheduler= expects a dask scheduler's address"):
            segment(image, M[1], "o.zarr", scheduler=address)
    assert not Path("o.zarr").exists()


def test_foreign_flags_get_the_fastunet_equivalent(user, capsys):
    from fastunet.cli.validate import foreign_flag

    for flag, hint in FOREIGN:
        argv = ["segment", "img.tif", "-o", "o.zarr", flag, "30"]
        err = _refused(user, capsys, argv, re.escape(f"{flag} is not a fastunet option"))
        assert hint in err and err.strip().endswith(foreign_flag(argv)), err
    assert _cli(["segment", "--diameter=30", "img.tif"], capsys)[0] == 2
    code, out, err = _cli([], capsys)  # bare fastunet: the help, status 0
    assert code == 0 and err == "" and "usage: fastunet" in out and "'fastunet' alone prints this help" in out


# --------------------------------------------------------------- class 3: inputs, numerics
def _ome(path, *, axes=("z", "y", "x"), scale=(1.0, 0.5, 0.5)):
    group = zarr.open_group(str(path), mode="w")
    group.create_array("0", shape=(2, 40, 44), dtype="uint8")[:] = 9
    datasets = [{"path": "0", "coordinateTransformations": [{"type": "scale", "scale": list(scale)}]}]
    group.attrs["ome"] = {"version": "0.5", "multiscales": [
        {"axes": [{"name": a, "type": "space"} for a in axes], "datasets": datasets}]}
    return path


def test_inputs(user, capsys, monkeypatch):
    _ome(user / "ord.ome.zarr", axes=("y", "x", "z"))
    _ome(user / "scale.ome.zarr", scale=(0.5, 0.5))
    os.mkfifo(user / "fifo")
    cases = [
        (["ord.ome.zarr"], r"list the axes in the order y,x,z for an array of shape \(2, 40, 44\); NGFF orders"),
        (["scale.ome.zarr"], r"scale of level 0 has 2 entries for 3 axes"),
        (["fifo"], r"'.*fifo' is a named pipe, not an image"),
        (["/dev/zero"], r"'/dev/zero' is a device file, not an image"),
        (["/dev/null"], r"'/dev/null' is a device file, not an image"),
    ]
    for inputs, pattern in cases:
        _refused(user, capsys, ["segment", *inputs, "-o", "o.zarr", *M], pattern)
    real = os.access  # root reads everything: an unreadable file is simulated
    monkeypatch.setattr(os, "access", lambda p, mode, **kw: Path(p).name != "img.tif" and real(p, mode, **kw))
    _refused(user, capsys, ["segment", "img.tif", "-o", "o.zarr", *M], r"cannot be read \(permission denied\)")


def test_the_input_checks_catch_every_input_case(user):
    from fastunet.io.ome import check_ngff_order, check_transforms
    from fastunet.paths import check_readable_input

    with pytest.raises(UserError, match="NGFF orders them z,y,x"):
        check_ngff_order("YXZ", (2, 40, 44), "x")
    with pytest.raises(UserError, match="2 entries for 3 axes"):
        check_transforms({"datasets": [{"path": "0", "coordinateTransformations": [
            {"type": "scale", "scale": [1, 1]}]}]}, 3, "x")
    for path in ("/dev/zero", "/dev/null"):
        with pytest.raises(UserError, match="is a device file"):
            check_readable_input(Path(path))


def test_numerics_at_the_dtypes_edges():
    """int64 with a huge offset and float32 scaled to 1e-30 give the float64 reference's result
    (before: foreground agreeing on 0.950 and 0.877 of the pixels): the probabilities to
    rounding (statistics taken relative to another origin differ in their last bits, which can
    flip a pixel whose classes tie), and beyond 2**53 the normalized values within the
    extended-precision offset's rounding."""
    from fastunet.io import open_volume
    from fastunet.modelfile import ModelBundle
    from fastunet.normalization import normalization_stats

    image, _ = synthetic_nuclei((64, 64), seed=int(torch.initial_seed() % 2**31), dtype="uint16")
    net = balanced_net(image)
    edges = {"percentile": (image.astype(np.int64) + 2**53, image.astype(np.float32) * np.float32(1e-30)),
             "meanstd": (image.astype(np.int64) - 2**53 + 7, image * 1e-300)}
    for mode, cases in edges.items():
        norm = Normalization(mode=mode)
        bundle = ModelBundle(net, norm)
        reference = np.asarray(segment(image.astype(np.float64), bundle, None, tile=52, output_kind="probs"))
        labels = reference.argmax(0)
        assert labels.any() and not labels.all()
        for shifted in cases:
            got = np.asarray(segment(shifted, bundle, None, tile=52, output_kind="probs"))
            np.testing.assert_allclose(got.astype(np.float32), reference.astype(np.float32), atol=2e-3, rtol=0,
                                       err_msg=f"{mode} {shifted.dtype}")
            assert (got.argmax(0) == labels).mean() > 0.999, (mode, shifted.dtype)
        ref_stats = normalization_stats(open_volume(image.astype(np.float64), axes="YX"), norm)
        far = image.astype(np.int64) + 2**62
        stats = normalization_stats(open_volume(far, axes="YX"), norm)
        want = Normalization.apply(image.astype(np.float64), ref_stats.offset[0], ref_stats.scale[0])
        got = Normalization.apply(far, stats.offset[0], stats.scale[0])
        # extended precision (64 significant bits) holds 2**62 + x to 0.5: the normalized values to 0.5 / scale
        assert np.abs(got - want).max() <= 0.5 / ref_stats.scale[0] + 1e-6


def test_an_extended_precision_offset_survives_the_outputs_record():
    """A resumed run reads the normalization constants back from the output's JSON metadata:
    the far int64 offset (extended precision) must come back to its last bit, not rounded
    to float64 (2**-8 at 2**44, whole units beyond 2**53)."""
    import json

    from fastunet.io import open_volume
    from fastunet.normalization import NormStats, normalization_stats

    image, _ = synthetic_nuclei((32, 32), seed=int(torch.initial_seed() % 2**31), dtype="uint16")
    far = image.astype(np.int64) + 2**62 + 1
    stats = normalization_stats(open_volume(far, axes="YX"), Normalization(mode="meanstd"))
    assert stats.offset.dtype == np.longdouble
    back = NormStats.from_record(json.loads(json.dumps(stats.record())))
    assert back.offset.dtype == np.longdouble and np.array_equal(back.offset, stats.offset)
    assert np.array_equal(back.scale, stats.scale)
    near = normalization_stats(open_volume(image, axes="YX"), Normalization(mode="meanstd"))
    record = json.loads(json.dumps(near.record()))
    assert record["norm_offset_lo"] is None and NormStats.from_record(record).offset.dtype == np.float64
    assert NormStats.from_record(dict.fromkeys(NormStats.RECORD_KEYS)) is None


def test_resume_refuses_an_input_edited_between_the_samples(user, capsys, monkeypatch):
    from fastunet.engine import scheduling

    data = np.random.default_rng(torch.initial_seed()).integers(0, 255, (8, 40, 40), dtype=np.uint8)
    zarr.create_array("in.zarr", shape=data.shape, chunks=(1, 20, 20), dtype="uint8")[:] = data
    argv = ["segment", "in.zarr", "-o", "o.zarr", *M, "--axes", "ZYX", "--tile", "52", "--block", "1,40,40",
            "--quiet"]
    real, calls = scheduling.run_block, []

    def run_block(job, block):
        calls.append(block.name)
        if len(calls) > 1:
            raise KeyboardInterrupt  # killed after one block
        return real(job, block)

    with monkeypatch.context() as m:
        m.setattr(scheduling, "run_block", run_block)
        assert _cli(argv, capsys)[0] == 130
    zarr.open_array("in.zarr", mode="r+")[2] = 255 - data[2]  # plane 2 holds no sample point
    err = _refused(user, capsys, [*argv, "--resume"], r"chunk files were modified since it was started")
    assert "c/2/0/0" in err and "--overwrite" in err


# ------------------------------------------------------------ class 4: outputs during a run
def test_a_full_disk_under_a_tiff_output_is_one_line_and_leaves_nothing(user, capsys, monkeypatch):
    def full(path, data, **kwargs):
        Path(path).write_bytes(b"II*\0" + b"\0" * 100)  # part of a file, then the disk is full
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(tifffile, "imwrite", full)
    err = _refused(user, capsys, ["segment", "img.tif", "-o", "o.tif", *M], r"No space left on device")
    assert "nothing of it was kept" in err and "--resume" not in err
    assert not list(user.glob("*o.tif*"))  # neither the TIFF nor its temporary file


def test_overwrite_of_an_output_that_cannot_be_removed_is_one_line(user, capsys, monkeypatch):
    assert _cli(["segment", "img.tif", "-o", "o.zarr", *M, "-q"], capsys)[0] == 0
    import fastunet.io.outputs

    def refused(path):
        raise PermissionError(errno.EACCES, "Permission denied", str(path / "instances" / "zarr.json"))

    monkeypatch.setattr(fastunet.io.outputs, "remove_tree", refused)
    _refused(user, capsys, ["segment", "img.tif", "-o", "o.zarr", *M, "--overwrite"],
             r"Cannot replace the output .*o.zarr' \(Permission denied")


def test_reports_are_checked_before_any_work_and_folders_made_only_once_accepted(user, capsys, monkeypatch):
    from fastunet.engine import ModelHandle

    def no_work(*args, **kwargs):
        raise AssertionError("work started")

    real_probe = Path.write_bytes

    def probe(self, data):
        if self.parent.name == "ro" and self.name.startswith(".fastunet-probe"):
            raise PermissionError(errno.EACCES, "Permission denied", str(self))
        return real_probe(self, data)

    Path("ro").mkdir()
    with monkeypatch.context() as m:
        m.setattr(Path, "write_bytes", probe)
        m.setattr(ModelHandle, "from_path", classmethod(no_work))
        _refused(user, capsys, ["segment", "img.tif", "-o", "o.zarr", *M, "--json", "ro/run.json"],
                 r"Cannot write to '.*ro' \(Permission denied\); choose a writable place for the --json file")
    _refused(user, capsys, ["segment", "img.tif", "--output-dir", "new", "--model", "none.safetensors"],
             r"none.safetensors' does not exist")
    assert not Path("new").exists()  # a refused run makes no folder
    assert _cli(["segment", "img.tif", "-o", "seg/{stem}.tif", *M, "-q"], capsys)[0] == 0  # a template's folder
    assert Path("seg/img.tif").is_file()


# ---------------------------------------------------------------------- class 5: signals
def _interrupt(monkeypatch, target, attr, exc=KeyboardInterrupt):
    def stop(*args, **kwargs):
        raise exc()

    monkeypatch.setattr(target, attr, classmethod(stop) if attr == "from_path" else stop)


def test_an_interrupt_in_every_phase_is_one_line_saying_what_was_kept(user, capsys, monkeypatch):
    import fastunet.engine
    import fastunet.normalization
    from fastunet.cli.signals import Terminated
    from fastunet.engine import ModelHandle
    from fastunet.io import SegmentationStore

    zarr_run = ["segment", "img.tif", "-o", "o.zarr", *M, "-q"]
    tiff_run = ["segment", "img.tif", "-o", "o.tif", *M, "-q"]
    phases = [  # (where it is stopped, command, exception, status, what the line says)
        ((ModelHandle, "from_path"), zarr_run, KeyboardInterrupt, 130, "nothing of o.zarr was written yet"),
        ((fastunet.normalization, "normalization_stats"), zarr_run, KeyboardInterrupt, 130,
         "nothing of o.zarr was written yet"),
        ((fastunet.engine, "execute"), zarr_run, KeyboardInterrupt, 130,
         "o.zarr is kept with 0 finished blocks: run the same command with --resume to continue"),
        ((fastunet.engine, "execute"), zarr_run, Terminated, 143,
         "o.zarr is kept with 0 finished blocks: run the same command with --resume to continue"),
        ((tifffile, "imwrite"), tiff_run, KeyboardInterrupt, 130,
         "nothing of o.tif was kept (a TIFF is written whole, at the end): run the command again for it"),
        ((SegmentationStore, "mark_complete"), zarr_run, KeyboardInterrupt, 130,
         "o.zarr is kept with 1 finished block: run the same command with --resume to continue"),
    ]
    for (target, attr), argv, exc, status, kept in phases:
        with monkeypatch.context() as m:
            _interrupt(m, target, attr, exc)
            code, _, err = _cli(argv, capsys)
        word = "terminated (SIGTERM)" if exc is Terminated else "interrupted"
        assert code == status and err == f"fastunet segment: {word}; {kept}\n", (attr, err)
        assert not list(user.glob(".*.tmp")) and not Path("o.tif").exists()
        if Path("o.zarr").exists():  # the kept output resumes, whatever the phase
            assert _cli([*argv, "--resume"], capsys)[0] == 0
            assert zarr.open_group("o.zarr", mode="r").attrs["fastunet"]["complete"]
            assert _cli(["segment", "img.tif", "-o", "o.zarr", *M, "-q", "--overwrite"], capsys)[0] == 0
            import shutil

            shutil.rmtree("o.zarr")
    with monkeypatch.context() as m:  # train before its first step: nothing to resume, and it says so
        import fastunet.train

        _interrupt(m, fastunet.train, "train")
        code, _, err = _cli(["train", "images", "labels", "-o", "t.safetensors", *TINY], capsys)
    assert code == 130 and err == "fastunet train: interrupted; nothing was kept (no training step was finished): " \
                                  "run the command again\n"


def _child(argv, **kwargs):
    """A fastunet process as a shell starts it: SIGINT reaches it (a background job would
    inherit it ignored)."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL), **kwargs)


def test_ctrl_c_while_the_command_starts_is_one_line(user):
    proc = _child([sys.executable, "-m", "fastunet", "segment", "img.tif", "-o", "o.zarr", *M])
    time.sleep(0.3)  # importing PyTorch
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and err.count("\n") == 1 and "Traceback" not in err, err
    assert err.startswith("fastunet") and "interrupted" in err and not Path("o.zarr").exists()


_STALL = """
import sys, time
from pathlib import Path
from fastunet.engine import scheduling
real, calls, marker = scheduling.run_block, [], Path(sys.argv[1])
def run_block(job, block):
    calls.append(block.name)
    if len(calls) >= 2:  # the second block runs for a minute
        marker.write_text(block.name)
        time.sleep(60)
    return real(job, block)
scheduling.run_block = run_block
from fastunet.cli import main
sys.exit(main(sys.argv[2:]))
"""


def test_a_second_ctrl_c_stops_at_once_without_an_abort(user, capsys):
    data = np.random.default_rng(torch.initial_seed()).normal(size=(4, 32, 32)).astype(np.float32)
    zarr.create_array("in.zarr", shape=data.shape, chunks=(1, 32, 32), dtype="float32")[:] = data
    argv = ["segment", "in.zarr", "-o", "o.zarr", *M, "--axes", "ZYX", "--tile", "52", "--block", "1,32,32",
            "--kind", "labels", "--quiet"]
    proc = _child([sys.executable, "-c", _STALL, "stalled", *argv])
    deadline = time.monotonic() + 120
    while not Path("stalled").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert Path("stalled").exists(), proc.communicate()
    proc.send_signal(signal.SIGINT)  # the first waits for the running block (a minute) ...
    time.sleep(0.3)
    t0 = time.monotonic()
    proc.send_signal(signal.SIGINT)  # ... the second does not
    _, err = proc.communicate(timeout=30)
    assert time.monotonic() - t0 < 10 and proc.returncode == 130, err
    assert "Traceback" not in err and "terminate called" not in err, err
    assert re.fullmatch(r"fastunet segment: interrupted again: stopped at once; o.zarr is kept with [01] finished "
                        r"blocks?: run the same command with --resume to continue", err.strip().splitlines()[-1]), err
    assert not Path(".o.zarr.fastunet-lock").exists()  # the lock was given back (a lease would refuse for minutes)
    assert _cli([*argv, "--resume"], capsys)[0] == 0  # the block cut short was not recorded: computed now
    assert zarr.open_group("o.zarr", mode="r").attrs["fastunet"]["complete"]


# ------------------------------------------------------------------ class 6: remote stores
def test_remote_stores_fail_in_one_line_naming_the_fix(user, capsys, monkeypatch):
    pytest.importorskip("s3fs")
    import s3fs

    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE",
                "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # no instance-metadata lookup
    monkeypatch.setenv("AWS_CONFIG_FILE", str(user / "none"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(user / "none"))
    s3fs.S3FileSystem.clear_instance_cache()
    closed = ["--storage-option", "endpoint_url=http://127.0.0.1:9",
              "--storage-option", 'config_kwargs={"retries": {"max_attempts": 1}}']
    _refused(user, capsys, ["segment", "img.tif", "-o", "s3://lab/o.zarr", *M, *closed],
             r"Cannot write 's3://lab/o.zarr': no credentials were found for s3://; set AWS_ACCESS_KEY_ID and "
             r"AWS_SECRET_ACCESS_KEY \(or AWS_PROFILE")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "y")
    s3fs.S3FileSystem.clear_instance_cache()
    _refused(user, capsys, ["segment", "s3://lab/in.zarr", "-o", "o.zarr", *M, *closed],
             r"Cannot reach the server of 's3://lab/in.zarr'.*endpoint_url")
    import asyncio

    from zarr.core.sync import sync

    async def pending():
        return [t for t in asyncio.all_tasks() if t is not asyncio.current_task() and not t.done()]

    assert sync(pending()) == []  # nothing left to be torn down at exit (the ContextVar traceback)
    s3fs.S3FileSystem.clear_instance_cache()


# ----------------------------------------------------------- class 7: what still tripped
def test_training_in_a_pipe_and_a_finished_run_resumed(user, capsys, monkeypatch):
    """In a pipe (capsys: not a terminal) the progress bar becomes plain lines, never carriage
    returns; a finished run resumed says so instead of "0.00 tiles/s". (The training itself is
    stood in for by its progress bar and result: tests/test_training.py trains.)"""
    import fastunet.train
    from fastunet.train.loop import TrainResult

    def train(images, labels, output, *, resume=False, progress=True, **kwargs):
        from tqdm.auto import tqdm

        with tqdm(total=3, disable=not progress, unit="it") as bar:
            for _ in range(3):
                bar.set_postfix({"loss": "0.5"}, refresh=False)
                bar.update(1)
        steps = 0 if resume else 3
        return TrainResult(model=None, output=Path(output), checkpoint=Path("t.checkpoint.safetensors"), curve=None,
                           steps=3, history={}, val=None, seconds=1.0, tiles_per_second=3.0 if steps else 0.0,
                           notes=[])

    monkeypatch.setattr(fastunet.train, "train", train)
    argv = ["train", "images", "labels", "-o", "t.safetensors", *TINY]
    code, out, err = _cli(argv, capsys)
    assert code == 0 and "\r" not in err and "3/3" in err and "trained 3 steps (3.00 tiles/s)" in out, err
    Path("t.checkpoint.safetensors").write_bytes(b"")
    code, out, err = _cli([*argv, "--resume"], capsys)
    assert code == 0 and "already trained 3 steps (nothing left to do)" in out and "0.00 tiles/s" not in out


def test_the_readme_first_example_says_plain_stacks_need_axes():
    text = (REPO / "README.md").read_text()
    first = next(line for line in text.splitlines() if line.strip().startswith("fastunet segment "))
    assert "--axes ZYX" in first, first


def test_logs_are_appended_and_reports_of_a_resumed_run_replaced(user, capsys):
    run = ["segment", "img.tif", "-o", "o.zarr", *M, "-q", "--log-file", "run.log", "--json", "run.json"]
    assert _cli(run, capsys)[0] == 0
    assert _cli([*run, "--resume"], capsys)[0] == 0  # its own report: replaced; its own log: appended
    assert json.loads(Path("run.json").read_text())["complete"] == 1
    assert Path("run.log").read_text().count(" DEBUG fastunet.cli: fastunet segment ") == 2
