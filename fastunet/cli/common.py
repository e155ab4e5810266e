"""What every ``fastunet`` sub-command shares: exit codes, logging, common options, the
translation of library errors into flags, and the process-wide settings the options imply."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import re
import sys
from pathlib import Path

from ..devices import DTYPE_CHOICES
from ..errors import UserError

__all__ = [
    "EXIT_OK",
    "EXIT_INTERNAL",
    "EXIT_USER",
    "EXIT_INTERRUPTED",
    "EXIT_TERMINATED",
    "EXIT_CODES",
    "epilog",
    "add_common_options",
    "add_network_options",
    "add_json_option",
    "to_flags",
    "configure_process",
    "cli_logging",
    "parse_sizes",
    "object_size_argument",
    "model_argument",
    "write_json",
    "human_stream",
    "plain_progress",
]

EXIT_OK = 0
EXIT_INTERNAL = 1  # an uncaught exception: a bug (Python prints the traceback and exits 1)
EXIT_USER = 2  # a usage or input error (argparse uses 2 as well)
EXIT_INTERRUPTED = 130  # 128 + SIGINT (Ctrl-C)
EXIT_TERMINATED = 143  # 128 + SIGTERM

EXIT_CODES = f"""\
exit status:
  {EXIT_OK:<4} success
  {EXIT_INTERNAL:<4} internal error: a bug (the traceback is printed; please report it)
  {EXIT_USER:<4} usage or input error, said in one line with the fix; with several inputs:
       at least one of them failed (the others were done)
  {EXIT_INTERRUPTED:<4} interrupted (Ctrl-C): the line says what was kept (a zarr output's finished
       blocks, train's checkpoint: rerun with --resume); a second Ctrl-C stops at once
  {EXIT_TERMINATED:<4} terminated (SIGTERM, e.g. a batch system's time limit); as for 130
"""

log = logging.getLogger("fastunet.cli")


def epilog(examples: str) -> str:
    """A sub-command's help epilog: its examples, then the exit status table."""
    return "examples:\n" + "\n".join("  " + line for line in examples.strip().splitlines()) + "\n\n" + EXIT_CODES


# ---------------------------------------------------------------------------------- options
def add_common_options(p: argparse.ArgumentParser, *, quiet: str = "no progress bar") -> None:
    """-v/--verbose, -q/--quiet and --log-file: what a command says, and where."""
    group = p.add_argument_group("messages")
    group.add_argument("-v", "--verbose", action="count", default=0,
                       help="say more: -v what is done (info), -vv details (debug)")
    group.add_argument("-q", "--quiet", action="store_true", help=quiet)
    group.add_argument("--log-file", metavar="PATH", help="also write every message (debug level, with times) "
                       "to this file, appended")


def add_network_options(p: argparse.ArgumentParser, *, tile: bool = True) -> None:
    """--model, --tile, --batch-size, --device, --backend, --dtype: how the network runs."""
    group = p.add_argument_group("network")
    group.add_argument("--model", metavar="PATH", help="fastunet .safetensors model file or bioimage.io package "
                       "(.bmz.zip written by fastunet export); default: the bundled model")
    if tile:
        group.add_argument("--tile", help="network input tile edge, e.g. 572 (388-pixel "
                           "output); a 3D model's: a cube's edge or Z,Y,X edges, e.g. 48,296,296; default: the "
                           "largest that fits the device")
        group.add_argument("--batch-size", type=int, help="tiles per network call (default 4 on CUDA, 2 on the CPU)")
    group.add_argument("--device", help="cuda:N or cpu (default: cuda when available)")
    group.add_argument("--backend", choices=("auto", "triton", "torch", "openvino"), default="auto",
                       help="auto: fused Triton kernels on CUDA when triton is installed, OpenVINO on the CPU when "
                            "openvino is installed (fastunet[openvino]), PyTorch otherwise; triton on the CPU runs "
                            "the kernels under the Triton interpreter (about 1000x slower: for checking them)")
    group.add_argument("--dtype", choices=DTYPE_CHOICES, default="auto",
                       help="auto (default): bf16 on CUDA and on CPUs with bf16 matrix units (AMX-BF16, "
                            "AVX512-BF16), fp32 on other CPUs; -v says which. int8: the OpenVINO backend on the CPU "
                            "with the network quantized after training (NNCF, calibrated on synthetic nuclei; "
                            "faster, checked for the bundled model)")


def add_json_option(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--json", metavar="PATH", help=f"write {what} as JSON to PATH ('-': standard output, "
                   "the human-readable lines then go to standard error)")


# --------------------------------------------------------------------- library errors -> flags
# Library parameters whose command-line flag is not ``--`` + the name with dashes.
_PARAMETER_FLAGS = {
    "segment": {"output": "-o", "output_kind": "--kind", "storage_options": "--storage-option"},
    "bench": {"out_dir": "--out", "cache_dir": "--cache"},
    "evaluate": {"n_images": "--synthetic"},
    "export": {"output": "-o"},
    "demo": {"folder": "-o"},
}


def to_flags(message: str, args: argparse.Namespace) -> str:
    """A library error in the words of the command line: ``name=True`` and a bare ``name=``
    become ``--name``, ``name="value"`` and ``name=<number>`` become ``--name value``, for the options of
    ``args.command`` (library errors speak of parameters, which Python callers see). Other
    forms (``name='value'``, ``name=[...]``: recorded values quoted by ``repr``) stay."""
    flags = {dest: "--" + dest.replace("_", "-") for dest in vars(args) if dest not in ("func", "command")}
    flags.update(_PARAMETER_FLAGS.get(args.command, {}))
    if not flags:
        return message
    names = "|".join(re.escape(n) for n in sorted(flags, key=len, reverse=True))

    def flag(match: re.Match) -> str:
        name, value = match.group(1), match.group(2)
        if match.group("number") is not None:
            return f"{flags[name]} "
        if value.startswith('"'):
            return f"{flags[name]} {value[1:-1]}"
        return flags[name]  # name=True, or the parameter named on its own (name=)

    pattern = rf"(?<![\w.-])({names})=(True\b|\"[^\"]*\"|(?P<number>(?=[0-9]))|(?=[\s,.;:)]|$))"
    return re.sub(pattern, flag, message)


# ------------------------------------------------------------------------- process settings
def configure_process(args: argparse.Namespace) -> None:
    """The process-wide settings a command's options imply, made here, by the program that
    owns the process (the library never changes them):

    * ``--backend triton`` on a machine without CUDA runs the kernels under the Triton
      interpreter, which must be switched on before triton is first imported (without triton
      installed the library says what to install);
    * ``--dtype fp32`` / ``tf32`` set PyTorch's TF32 switches for its CUDA convolutions and
      matmuls (the torch backend checks that they match the dtype).
    """
    import os

    from ..devices import cuda_available

    if getattr(args, "backend", None) == "triton" and not cuda_available():
        os.environ.setdefault("TRITON_INTERPRET", "1")
    if getattr(args, "dtype", None) in ("fp32", "tf32") and cuda_available():
        import torch

        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = args.dtype == "tf32"


# ---------------------------------------------------------------------------------- logging
class _CommandFormatter(logging.Formatter):
    """``fastunet segment: warning: ...``: the program's name and the level, one line."""

    def __init__(self, command: str):
        super().__init__()
        self.prefix = f"fastunet {command}: " if command else "fastunet: "

    def format(self, record: logging.LogRecord) -> str:
        if getattr(record, "plain", False):  # e.g. "fastunet segment: interrupted; ..."
            return f"{self.prefix}{record.getMessage()}"
        return f"{self.prefix}{record.levelname.lower()}: {record.getMessage()}"


@contextlib.contextmanager
def cli_logging(command: str, *, verbose: int = 0, log_file: str | None = None, mode: str = "a"):
    """Send the ``fastunet`` loggers' records to standard error (warnings and errors; info
    with ``-v``, debug with ``-vv``) and, with ``log_file``, everything to that file (appended,
    ``mode="a"``, or replacing it, ``"w"``: :func:`fastunet.cli.files.check_files` decides);
    restores the loggers on exit (``main`` may run many times in one process)."""
    logger = logging.getLogger("fastunet")
    saved = (logger.level, logger.propagate)
    console = logging.StreamHandler(sys.stderr)
    console.setLevel(logging.WARNING if verbose <= 0 else logging.INFO if verbose == 1 else logging.DEBUG)
    console.setFormatter(_CommandFormatter(command))
    handlers: list[logging.Handler] = [console]
    if log_file:
        try:
            handler = logging.FileHandler(log_file, mode=mode, encoding="utf-8")
        except OSError as exc:
            raise UserError(f"Cannot write the log file {log_file!r} ({exc.strerror or exc}); "
                            "choose a writable --log-file path.") from None
        handler.setLevel(logging.DEBUG)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        handlers.append(handler)
    for handler in handlers:
        logger.addHandler(handler)
    logger.setLevel(min(h.level for h in handlers))
    logger.propagate = False
    try:
        yield logger
    finally:
        for handler in handlers:
            logger.removeHandler(handler)
            if handler is not console:
                handler.close()
        logger.setLevel(saved[0])
        logger.propagate = saved[1]


# ---------------------------------------------------------------------------------- helpers
def parse_sizes(text: str | None, flag: str, example: str) -> tuple[int, ...] | None:
    """``"1,512,512"`` -> ``(1, 512, 512)``; one clear line for anything else."""
    if text is None:
        return None
    try:
        return tuple(int(v) for v in text.split(","))
    except ValueError:
        raise UserError(f"{flag} expects pixel counts separated by commas, e.g. {example}; got {text!r}.") from None


def tile_argument(text: str | None) -> int | tuple[int, ...] | None:
    """``--tile``: one edge (``572``; a square, or a 3D model's cube) or one edge per axis
    (``48,296,296``: a 3D model's Z, Y, X); the model checks them against its network."""
    if text is None:
        return None
    try:
        edges = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise UserError(f"--tile expects an edge in pixels, e.g. 572, or a 3D model's Z,Y,X edges, e.g. 48,296,296; "
                        f"got {text!r}.") from None
    return edges[0] if len(edges) == 1 else edges


def object_size_argument(text: str | None):
    """``--object-size``: a number of pixels, or a word (auto, truth) the library checks."""
    try:
        return None if text is None else float(text)
    except ValueError:
        return text


def model_argument(path: str | None):
    """``--model``: None (the bundled model), a model file's path, or the network of a
    bioimage.io package (``.zip``: read without unpickling, see :mod:`fastunet.bioimageio`)."""
    if path is None or not str(path).lower().endswith(".zip"):
        return path
    from ..bioimageio import read_package

    return read_package(path)


def write_json(dest: str, data) -> None:
    """Write ``data`` as JSON to the file ``dest`` (under a temporary name renamed into place:
    never half a report), or to standard output for ``-``. ``dest`` was checked before the
    command's work (:func:`fastunet.cli.files.check_files`)."""
    from ..paths import atomic_path

    text = json.dumps(data, indent=2, default=str)
    if dest == "-":
        sys.stdout.write(text + "\n")
        sys.stdout.flush()
        return
    try:
        with atomic_path(dest) as tmp:
            Path(tmp).write_text(text + "\n")
    except OSError as exc:
        raise UserError(f"Cannot write the JSON summary {dest!r} ({exc.strerror or exc}); "
                        "choose a writable --json path.") from None
    log.info("wrote %s", dest)


def human_stream(args: argparse.Namespace):
    """Where the human-readable lines go: standard output, or standard error when the JSON
    summary takes standard output (``--json -``)."""
    return sys.stderr if getattr(args, "json", None) == "-" else sys.stdout


class _PlainLines:
    """A stream in place of standard error for a progress bar that redraws itself with
    carriage returns (tqdm): in a log or a pipe, the bar's latest state becomes one plain line
    every ``interval`` seconds; complete lines (notes, warnings) pass as they are."""

    def __init__(self, stream, interval: float):
        import time

        self.stream, self.interval, self.clock = stream, interval, time.monotonic
        self.line, self.status, self.shown = "", "", self.clock()

    def write(self, text: str) -> int:
        for piece in re.split(r"([\r\n])", text):
            if piece == "\r":
                self.status = self.line.strip() or self.status
                self.line = ""
                if self.status and self.clock() - self.shown >= self.interval:
                    self.stream.write(self.status + "\n")
                    self.shown, self.status = self.clock(), ""
            elif piece == "\n":
                if self.line.strip():
                    self.stream.write(self.line.strip() + "\n")
                self.line = ""
            else:
                self.line += piece
        return len(text)

    def flush(self) -> None:
        self.stream.flush()

    def isatty(self) -> bool:
        return False

    def fileno(self) -> int:
        return self.stream.fileno()


@contextlib.contextmanager
def plain_progress(interval: float = 30.0):
    """While the block runs, a progress bar on standard error becomes plain lines (see
    :class:`_PlainLines`): what a log file or a pipe should receive."""
    saved = sys.stderr
    sys.stderr = _PlainLines(saved, interval)
    try:
        yield
    finally:
        sys.stderr = saved
