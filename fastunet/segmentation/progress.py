"""Progress of a segmentation over its blocks, and the line that sums it up."""

from __future__ import annotations

import sys
import threading
import time

__all__ = ["ProgressBar", "summary_line", "PROGRESS_INTERVAL"]

PROGRESS_INTERVAL = 30.0  # seconds between plain progress lines when stderr is not a terminal


class ProgressBar:
    """Progress over blocks with Mpx/s. ``enabled`` False: nothing. Otherwise a tqdm bar when
    stderr is a terminal, and when it is not (a batch job's log) a plain line every
    ``interval`` seconds: blocks done/total, Mpx/s, ETA."""

    def __init__(self, *, total: int, done: int, enabled, interval: float = PROGRESS_INTERVAL, desc: str = "segment"):
        self.t0 = time.perf_counter()
        self.voxels = 0
        self.total, self.done, self.start_done = total, done, done
        self.bar = None
        self.desc = desc
        self._stop = threading.Event()
        self._thread = None
        if enabled is False:
            return
        stream = sys.stderr
        try:
            tty = stream.isatty()
        except (AttributeError, ValueError):
            tty = False
        if tty:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, initial=done, unit="block", desc=desc, file=stream,
                            dynamic_ncols=True)
        elif done < total:
            self.stream = stream
            self._thread = threading.Thread(target=self._report, args=(float(interval),), daemon=True,
                                            name="fastunet-progress")
            self._thread.start()

    def rate(self) -> float:
        return self.voxels / 1e6 / max(time.perf_counter() - self.t0, 1e-9)

    def line(self) -> str:
        elapsed = time.perf_counter() - self.t0
        computed = self.done - self.start_done
        if computed:
            eta = _duration(elapsed / computed * (self.total - self.done))
        else:
            eta = "unknown"
        return (f"{self.desc}: {self.done}/{self.total} blocks, {self.rate():.2f} Mpx/s, "
                f"{_duration(elapsed)} elapsed, ETA {eta}")

    def _report(self, interval: float) -> None:
        while not self._stop.wait(interval):
            try:
                print(self.line(), file=self.stream, flush=True)
            except (OSError, ValueError):  # the stream was closed
                return

    def update(self, summary: dict) -> None:
        self.voxels += summary["voxels"]
        self.done += 1
        if self.bar is not None:
            self.bar.set_postfix_str(f"{self.rate():.2f} Mpx/s", refresh=False)
            self.bar.update(1)

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self.bar is not None:
            self.bar.close()


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, sec = divmod(rest, 60)
    return f"{h}h{m:02d}m{sec:02d}s" if h else (f"{m}m{sec:02d}s" if m else f"{sec}s")


def summary_line(summary: dict, output) -> str:
    """One line for the end of a run: blocks, Mpx, seconds, Mpx/s, device, backend, dtype."""
    s = summary
    if s.get("computed") == 0 and s.get("skipped") == s.get("blocks"):
        return f"{output} is already complete ({s.get('blocks')} blocks); nothing to do."
    tile = "x".join(str(t) for t in s["tile"])
    skipped = f", {s['skipped']} skipped (resume)" if s["skipped"] else ""
    line = (
        f"segmented {s['computed']} of {s['blocks']} blocks{skipped} -> {output}: {s['megapixels']:.2f} Mpx "
        f"in {s['seconds']:.1f} s = {s['mpx_per_s'] or 0:.2f} Mpx/s on {s['device']} "
        f"({s['backend']}, {s['dtype']}, tile {tile}, batch {s['batch_size']}, {s['scheduler']})"
    )
    if s.get("nonfinite"):
        line += f"; {s['nonfinite']} NaN/Inf input values set to 0"
    if s.get("object_size"):
        how = "estimated " if s.get("object_size_estimated") else ""
        line += f"; {how}object size {s['object_size']:.1f} px, rescaled by {s['scale']:.3g} for the model"
    if "objects" in s:
        line += f"; {s['objects']} objects"
        if s.get("min_size_used") or s.get("holes_filled") or s.get("min_confidence"):
            unsure = s.get("objects_unsure", 0)
            line += (f" ({s.get('objects_removed', 0) - unsure} under {s.get('min_size_used', 0)} px removed, "
                     + (f"{unsure} of a mean probability under {s['min_confidence']:.2f} removed, "
                        if s.get("min_confidence") else "")
                     + f"{s.get('holes_filled', 0)} holes filled)")
    return line
