import subprocess
import sys

from fastunet import ReferenceUNet, UNetConfig, save_model
from fastunet.cli import main


def test_info_prints_config_and_tiles(tmp_path, capsys):
    path = save_model(tmp_path / "m.safetensors", ReferenceUNet(UNetConfig(base_channels=4, depth=4)))
    assert main(["info", str(path)]) == 0
    out = capsys.readouterr().out
    assert "base_channels  4" in out
    assert "context        92 px per side" in out
    assert "572->388" in out
    assert "conv layers    23" in out
    from test_model import paper_parameter_count

    assert f"parameters     {paper_parameter_count(base=4, depth=4):,}" in out


def test_info_lists_tiles_of_a_deep_network(tmp_path, capsys):
    """Depth 7 starts at 1532 px: the tile list must not come out empty."""
    path = save_model(tmp_path / "m.safetensors", ReferenceUNet(UNetConfig(base_channels=1, depth=7)))
    assert main(["info", str(path)]) == 0
    line = next(s for s in capsys.readouterr().out.splitlines() if s.startswith("valid tiles"))
    assert "1532->4" in line and line.count("->") >= 5


def test_info_missing_model_is_a_clean_error(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "fastunet", "info", str(tmp_path / "missing.safetensors")],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert "does not exist" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_info_on_a_folder_names_the_fix(tmp_path, capsys):
    assert main(["info", str(tmp_path)]) == 2
    assert "is a folder; pass the .safetensors model file" in capsys.readouterr().err


def test_train_command_records_zero_valued_options():
    from fastunet.cli import build_parser
    from fastunet.cli.train import train_command as _train_command

    args = build_parser().parse_args(["train", "im", "lb", "-o", "m.safetensors", "--seed", "0", "--lr", "1e-3", "--quiet"])
    command = _train_command(args)
    assert "--seed 0" in command and "--lr 0.001" in command and "--quiet" in command
    assert "--resume" not in command  # flags left off stay off


def test_library_parameters_become_flags_in_cli_errors():
    """Library errors name parameters (Python callers see them); the CLI prints its flags."""
    import argparse

    from fastunet.cli import to_flags

    args = argparse.Namespace(command="segment", func=None, output="o.zarr", kind="labels", overwrite=False,
                              tile=None, axes=None, batch_size=None, block=None)
    assert to_flags("pass overwrite=True to replace it", args) == "pass --overwrite to replace it"
    assert to_flags('e.g. axes="ZYX" for a z-stack', args) == "e.g. --axes ZYX for a z-stack"
    assert to_flags("tile=572 and batch_size=2", args) == "--tile 572 and --batch-size 2"
    assert to_flags("tile= expects a size", args) == "--tile expects a size"
    assert to_flags('output="x.zarr", output_kind="both"', args) == "-o x.zarr, --kind both"
    assert to_flags('block="1,64,64"', args) == "--block 1,64,64"
    # Recorded values (repr-quoted, lists) are no parameters to translate.
    assert to_flags("created with output='both', tile=[572, 572]", args) == "created with output='both', tile=[572, 572]"
    # Names that are no option of the command, and attribute-like words, stay as they are.
    assert to_flags("threads=4, self.tile=4, x=3", args) == "threads=4, self.tile=4, x=3"



def test_the_program_exits_at_once_after_flushing_its_output(monkeypatch, capsys):
    """console_main (the console script, python -m fastunet): main's status, the output
    flushed, then os._exit; with a non-daemon thread still running, Python's own exit."""
    import importlib
    import threading

    import pytest

    cli_main = importlib.import_module("fastunet.cli.main")  # the module, not fastunet.cli's main

    exits = []

    def fake_exit(status):
        exits.append(status)
        raise SystemExit(status)

    def command():
        print("written", end="")  # no newline: only a flush gets it out
        return 3

    monkeypatch.setattr(cli_main, "main", command)
    monkeypatch.setattr(cli_main.os, "_exit", fake_exit)
    # the threads alive as the program ends: none but this one (other tests may leave some)
    monkeypatch.setattr(cli_main.threading, "enumerate", lambda: [threading.main_thread()])
    with pytest.raises(SystemExit) as stop:
        cli_main.console_main()
    assert stop.value.code == 3 and exits == [3] and capsys.readouterr().out == "written"

    release = threading.Event()
    worker = threading.Thread(target=release.wait, daemon=False)
    worker.start()
    monkeypatch.setattr(cli_main.threading, "enumerate", lambda: [threading.main_thread(), worker])
    try:
        with pytest.raises(SystemExit) as stop:
            cli_main.console_main()
    finally:
        release.set()
        worker.join()
    assert stop.value.code == 3 and exits == [3]  # not os._exit: Python waits for the thread


def test_python_m_fastunet_writes_a_complete_output(tmp_path):
    """A whole `python -m fastunet segment` process (which leaves with os._exit) leaves a
    complete, readable output and exit status 0."""
    import numpy as np
    import tifffile
    import zarr

    from fastunet.synthetic import synthetic_nuclei

    image, _ = synthetic_nuclei((64, 80), seed=3, dtype="uint16")
    tifffile.imwrite(tmp_path / "img.tif", image)
    proc = subprocess.run([sys.executable, "-m", "fastunet", "segment", str(tmp_path / "img.tif"), "-o",
                           str(tmp_path / "out.zarr"), "--device", "cpu", "--backend", "torch"],
                          capture_output=True, text=True)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    root = zarr.open_group(str(tmp_path / "out.zarr"), mode="r")
    labels = root["labels"][:] if "labels" in root else next(iter(root.arrays()))[1][:]
    assert labels.shape[-2:] == (64, 80) and np.count_nonzero(labels)
