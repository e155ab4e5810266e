"""The command line's habits: many inputs per call (files, folders, globs) with one model load,
output folders and name templates, per-file resume and summaries, --kind, --json, logging,
--version, exit codes and examples in --help."""

import json
import subprocess
import sys

import numpy as np
import pytest
import tifffile
import zarr
from test_segment_cli import _model, _rng

from fastunet import segment
from fastunet.cli import build_parser, main
from fastunet.cli.batch import expand_inputs, output_paths
from fastunet.errors import UserError


@pytest.fixture
def model(tmp_path):
    return str(_model(tmp_path / "m.safetensors"))


@pytest.fixture
def images(tmp_path):
    """Two TIFFs in a folder, with a note beside them that is no image."""
    folder = tmp_path / "in"
    folder.mkdir()
    rng = _rng()
    for name in ("a.tif", "b.ome.tif"):
        tifffile.imwrite(folder / name, rng.integers(0, 255, size=(30, 41)).astype(np.uint8))
    (folder / "notes.txt").write_text("not an image")
    return folder


def _segment(argv, capsys):
    code = main(["segment", *map(str, argv)])
    out, err = capsys.readouterr()
    return code, out, err


def test_two_file_glob_call_loads_the_model_once(tmp_path, model, images, capsys, monkeypatch):
    from fastunet.engine import ModelHandle

    loads = []
    real = ModelHandle.from_path.__func__

    def counting(cls, path):
        loads.append(path)
        return real(cls, path)

    monkeypatch.setattr(ModelHandle, "from_path", classmethod(counting))
    report = tmp_path / "run.json"
    code, out, err = _segment([images / "*.tif", "--output-dir", tmp_path / "seg", "--model", model,
                               "--json", report], capsys)
    assert code == 0, err
    assert len(loads) == 1
    lines = out.splitlines()
    assert lines[0].startswith("[1/2] segmented") and "a_seg.tif" in lines[0]  # the output follows the input
    assert lines[1].startswith("[2/2] segmented") and "b_seg.ome.tif" in lines[1]
    assert lines[2].startswith("2 inputs: 2 segmented, 0 already complete, 0 failed")
    for name in ("a", "b"):
        source = images / ("a.tif" if name == "a" else "b.ome.tif")
        expected = np.asarray(segment(source, model, None))
        output = tmp_path / "seg" / (f"{name}_seg.tif" if name == "a" else f"{name}_seg.ome.tif")
        np.testing.assert_array_equal(tifffile.imread(output), expected)
    record = json.loads(report.read_text())
    assert record["command"] == "segment" and record["done"] == 2 and record["failed"] == 0
    assert [f["status"] for f in record["files"]] == ["done", "done"]
    assert record["files"][0]["summary"]["blocks"] >= 1 and record["files"][0]["output"].endswith("a_seg.tif")
    # Per-file resume: both complete, nothing recomputed; the summary says so per file.
    code, out, err = _segment([images, "--output-dir", tmp_path / "seg", "--model", model, "--resume",
                               "--json", report], capsys)
    assert code == 0, err
    assert out.count("is already complete") == 2 and "2 already complete" in out
    assert [f["status"] for f in json.loads(report.read_text())["files"]] == ["complete", "complete"]
    # A folder segmented into itself: its outputs are no inputs of the next call.
    code, _, err = _segment([images, "--output-dir", images, "--model", model, "--quiet"], capsys)
    assert code == 0, err
    assert expand_inputs([str(images)]) == [str(images / "a.tif"), str(images / "b.ome.tif")]


def test_a_bad_input_among_many_is_reported_and_the_others_are_done(tmp_path, model, images, capsys):
    (images / "broken.tif").write_text("not a TIFF")
    code, out, err = _segment([images, "-o", tmp_path / "{stem}.tif", "--model", model, "--json", "-",
                               "--quiet"], capsys)
    assert code == 2
    assert err.count("\n") == 1 and err.startswith(f"fastunet segment: error: {images / 'broken.tif'}: ")
    record = json.loads(out)  # --json -: standard output holds the JSON only
    assert [(f["input"].rsplit("/", 1)[1], f["status"]) for f in record["files"]] == [
        ("a.tif", "done"), ("b.ome.tif", "done"), ("broken.tif", "failed")]
    assert record["files"][2]["error"] and not (tmp_path / "broken.tif").exists()
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "a.tif"),
                                  np.asarray(segment(images / "a.tif", model, None)))


def test_expanding_inputs(tmp_path, images):
    zarr.create_array(str(images / "c.zarr"), shape=(8, 8), dtype="uint8")
    (images / "sub").mkdir()
    assert expand_inputs([str(images)]) == [str(images / n) for n in ("a.tif", "b.ome.tif", "c.zarr")]
    # a zarr store is one input, a pattern is expanded, duplicates are dropped, URLs pass through
    assert expand_inputs([str(images / "c.zarr"), str(images / "*.tif"), str(images / "a.tif"), "s3://b/x.zarr"]) == [
        str(images / "c.zarr"), str(images / "a.tif"), str(images / "b.ome.tif"), "s3://b/x.zarr"]
    with pytest.raises(UserError, match="matches no file"):
        expand_inputs([str(images / "*.png")])
    with pytest.raises(UserError, match="not a zarr array or group and holds no TIFF"):
        expand_inputs([str(images / "sub")])


def test_naming_outputs(tmp_path):
    inputs = ["x/a.ome.tif", "y/b.zarr", "y/c.tiff"]
    assert output_paths(inputs, output=None, output_dir=str(tmp_path / "o"), output_name=None) == [
        str(tmp_path / "o" / n) for n in ("a_seg.ome.tif", "b_seg.zarr", "c_seg.tif")]  # each input's format
    assert not (tmp_path / "o").exists()  # made by the run once it is accepted (make_folders)
    assert output_paths(inputs, output="out/{parent}-{index}-{name}.tif", output_dir=None, output_name=None) == [
        "out/x-1-a.ome.tif.tif", "out/y-2-b.zarr.tif", "out/y-3-c.tiff.tif"]
    assert output_paths(inputs[:1], output="one.zarr", output_dir=None, output_name=None) == ["one.zarr"]
    for kwargs, message in [
        (dict(output="one.zarr", output_dir=None, output_name=None), "names one output but 3 inputs"),
        (dict(output=None, output_dir=None, output_name=None), "Pass -o OUTPUT"),
        (dict(output="{stem}.zarr", output_dir=None, output_name="x"), "--output-name names outputs inside"),
        (dict(output="{nom}.zarr", output_dir=None, output_name=None), r"Unknown field \{nom\}"),
        (dict(output="o/{parent}.zarr", output_dir=None, output_name=None), "would both be written to 'o/y.zarr'"),
        (dict(output=None, output_dir=str(tmp_path), output_name="same.zarr"), "has no field"),
        (dict(output="both", output_dir=None, output_name=None), "moved to --kind"),
    ]:
        with pytest.raises(UserError, match=message):
            output_paths(inputs if kwargs["output"] != "both" else inputs[:1], **kwargs)


def test_kinds():
    """--kind goes to the library's output_kind= as it is; its errors come back as --kind."""
    import argparse

    from fastunet.cli import to_flags
    from fastunet.kinds import parse_kinds

    assert parse_kinds(None, 2) == ("instances",) and parse_kinds(None, 3) == ("labels",)
    assert parse_kinds("probs,labels", 2) == ("labels", "probs")
    assert parse_kinds("both", 2) == ("labels", "probs") and parse_kinds(" probs ", 2) == ("probs",)
    assert parse_kinds("probs,instances", 2) == ("instances", "probs")
    args = argparse.Namespace(command="segment", func=None, kind=None, output=None)
    for bad in ("label", "", "labels;probs"):
        with pytest.raises(UserError) as err:
            parse_kinds(bad, 2)
        assert to_flags(str(err.value), args).startswith("--kind expects")


def test_kind_probs_through_the_cli(tmp_path, model, images, capsys):
    code, _, err = _segment([images / "a.tif", "-o", tmp_path / "p.zarr", "--model", model, "--kind", "probs",
                             "--quiet"], capsys)
    assert code == 0, err
    root = zarr.open_group(str(tmp_path / "p.zarr"))
    assert "probs" in root and "labels" not in root


def test_verbose_and_log_file(tmp_path, model, images, capsys):
    log = tmp_path / "run.log"
    code, _, err = _segment([images / "a.tif", "-o", tmp_path / "o.zarr", "--model", model, "-v", "--log-file",
                             log, "--quiet"], capsys)
    assert code == 0, err
    assert "fastunet segment: info: 1 input(s)" in err and "debug" not in err
    text = log.read_text()
    assert " DEBUG fastunet.cli: fastunet segment " in text and " INFO fastunet.cli.segment: [1/1] " in text
    code, _, err = _segment([images / "a.tif", "-o", tmp_path / "o.zarr", "--model", model, "--log-file", log],
                            capsys)
    assert code == 2 and err.count("\n") == 1  # one line on the terminal, and the same in the log
    last = log.read_text().splitlines()[-1]
    assert " ERROR fastunet.cli.segment: The output " in last and last.endswith(err.split(": error: ", 1)[1].strip())
    code, _, err = _segment([images / "a.tif", "-o", tmp_path / "x.zarr", "--log-file", tmp_path / "no" / "l.txt"],
                            capsys)
    assert code == 2 and "The folder of the --log-file" in err and "does not exist" in err


def test_version_help_epilogs_and_exit_codes(capsys):
    from fastunet import __version__

    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0 and capsys.readouterr().out.strip() == f"fastunet {__version__}"
    from fastunet.cli.main import COMMANDS

    top = build_parser().format_help()
    names = [c.__name__.rsplit(".", 1)[1] for c in COMMANDS]
    assert names == ["segment", "train", "evaluate", "demo", "export", "info", "bench"]
    assert "exit status:" in top and all(f"    {n} " in top for n in names)
    for name in names:
        with pytest.raises(SystemExit) as exc:
            main([name, "--help"])
        assert exc.value.code == 0
        text = capsys.readouterr().out
        assert "examples:\n  fastunet " + name in text, name
        for code in ("0 ", "1 ", "2 ", "130", "143"):
            assert f"\n  {code}" in text, (name, code)
    readme = (__import__("pathlib").Path(__file__).resolve().parents[1] / "README.md").read_text()
    for code in ("130", "143"):
        assert f"| {code} |" in readme


def test_cpu_path_without_triton(tmp_path, model, images):
    """With triton not importable, segment runs on the PyTorch backend, and --backend triton is
    one line saying what to install."""
    block = "import sys; sys.modules['triton'] = None; from fastunet.cli import main; sys.exit(main(sys.argv[1:]))"
    base = [sys.executable, "-c", block, "segment", str(images / "a.tif"), "--model", model, "--quiet"]
    ok = subprocess.run([*base, "-o", str(tmp_path / "o.zarr")], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    bad = subprocess.run([*base, "-o", str(tmp_path / "t.zarr"), "--backend", "triton"], capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1, bad.stderr
    assert "--backend triton needs the triton package" in bad.stderr and "fastunet[gpu]" in bad.stderr
    assert "--backend torch" in bad.stderr and not (tmp_path / "t.zarr").exists()
