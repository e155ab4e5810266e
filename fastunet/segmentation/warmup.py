"""The network made ready in a helper thread while a run plans: :class:`Warmup`.

On the CPU a new process loads the network (OpenVINO: its runtime, the converted model) and
compiles it for the run's tile while the segmenter takes the normalization statistics and
the input's fingerprint, instead of after them.
"""

from __future__ import annotations

import threading

__all__ = ["Warmup"]


class Warmup:
    """Loads the network and prepares it for the run's tile (:meth:`fastunet.engine.LoadedNetwork.prepare`:
    OpenVINO compiles it) in a thread of its own while the statistics are taken; :meth:`join`
    waits for it and raises what it raised."""

    def __init__(self, segmenter):
        self.segmenter = segmenter
        self.thread: threading.Thread | None = None
        self.error: BaseException | None = None

    def start(self, layout) -> None:
        self.thread = threading.Thread(target=self._run, args=(layout.tile,), name="fastunet-warmup", daemon=True)
        self.thread.start()

    def _run(self, tile) -> None:
        try:
            self.segmenter.network.prepare(tile)
        except BaseException as exc:  # noqa: BLE001 - raised by join, in the caller's thread
            self.error = exc

    def join(self, *, raising: bool = True) -> None:
        if self.thread is not None:
            self.thread.join()
        if self.error is not None and raising:
            raise self.error
