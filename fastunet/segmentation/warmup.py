"""The network made ready in a helper thread while a run plans: :class:`Warmup`.

On the CPU a new process loads the network (OpenVINO: its runtime, the converted model) and
compiles it for the run's tile while the segmenter takes the normalization statistics and
the input's fingerprint, instead of after them. A run that splits objects
(``split="watershed"``) also imports what the watershed needs there (``scipy.ndimage``: 0.34
CPU-s of a process, ``benchmarks/results/2026-12-07T101047Z-label-runs.json``); the default
labelling imports no scipy (:mod:`fastunet.engine.connectivity`).
"""

from __future__ import annotations

import importlib
import threading

__all__ = ["Warmup"]


class Warmup:
    """Loads the network and prepares it for the run's tile and network ``output``
    (:meth:`fastunet.engine.LoadedNetwork.prepare`: OpenVINO compiles it) in a thread of its
    own while the statistics are taken, then imports ``modules`` (what the block tasks will
    import: a failure there is theirs to report); :meth:`join` waits for the network, not for
    the imports, and raises what loading raised."""

    def __init__(self, segmenter, modules: tuple[str, ...] = (), output: str = "labels"):
        self.segmenter = segmenter
        self.modules = modules
        self.output = output  # what the run asks the network for (fastunet.kinds.network_output)
        self.thread: threading.Thread | None = None
        self.ready = threading.Event()
        self.error: BaseException | None = None

    def start(self, layout) -> None:
        self.thread = threading.Thread(target=self._run, args=(layout.tile,), name="fastunet-warmup", daemon=True)
        self.thread.start()

    def _run(self, tile) -> None:
        try:
            self.segmenter.network.prepare(tile, self.output)
        except BaseException as exc:  # noqa: BLE001 - raised by join, in the caller's thread
            self.error = exc
            return
        finally:
            self.ready.set()
        for name in self.modules:
            try:
                importlib.import_module(name)
            except ImportError:  # the block task that needs it raises it
                return

    def join(self, *, raising: bool = True) -> None:
        if self.thread is not None:
            self.ready.wait()
        if self.error is not None and raising:
            raise self.error
