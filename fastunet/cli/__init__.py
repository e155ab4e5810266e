"""The ``fastunet`` command line: one module per sub-command, the shared parts in
:mod:`~fastunet.cli.common`, the entry point in :mod:`~fastunet.cli.main`.

Each sub-command module has ``add_parser(sub)`` (its options, grouped in small functions,
and its examples) and ``run(args)`` (returns the exit status).
"""

from __future__ import annotations

from .common import configure_process, to_flags
from .main import build_parser, console_main, main

__all__ = ["main", "console_main", "build_parser", "to_flags", "configure_process"]
