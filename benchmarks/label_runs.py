"""A block's labelling: ``label_block`` (every class at once, by runs) against scipy's labels
and against an earlier revision's ``label_block``.

On class maps of synthetic 1024 x 1024 images (the true foreground of ``--styles``, seeds
4000.., as class 1, the rest class 0: the kind of map the network gives), it times, medians of
``--reps`` calls, in ``--rounds`` interleaved rounds:

* ``label_block``: :func:`fastunet.engine.instances.label_block` as a ``segment`` with its
  defaults calls it (background labelled too, for the holes: ids, first voxels, sizes,
  classes, border pieces, contacts), each round in a process of its own;
* with ``--against REV``, the same function of that git revision (a temporary worktree, in
  processes of its own, alternating with the above; e.g. the revision before the labelling by
  runs, which labelled each class with :func:`scipy.ndimage.label`);
* ``scipy_labels``: :func:`scipy.ndimage.label` of the two class masks, nothing else (the ids
  alone: a lower bound of what a labelling through scipy costs);
* ``scipy_import``: importing ``scipy.ndimage`` in a process of its own (which a ``segment``
  with its defaults no longer does), as CPU seconds over a process that imports numpy alone.

    python benchmarks/label_runs.py --against 49c8a22 --out label-runs

The result is a JSON file in ``--out`` to copy to ``benchmarks/results/``. A CPU measurement
on whatever else the machine is doing: only the ratios of one run compare.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

FIRST_SEED = 4000


def _median_ms(fn, reps: int) -> float:
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def _process_cpu(code: str, rounds: int) -> float:
    """Median CPU seconds (user + system) of ``python -c code``."""
    seconds = []
    for _ in range(rounds):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        subprocess.run([sys.executable, "-c", code], check=True)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        seconds.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
    return statistics.median(seconds)


_TIME_BLOCKS = """
import json, statistics, sys, time
import numpy as np
from fastunet.engine.instances import InstanceOptions, label_block
from fastunet.synthetic_styles import style_image
styles, reps, first = sys.argv[1].split(","), int(sys.argv[2]), int(sys.argv[3])
options = InstanceOptions(fill_holes=True, min_size="auto")
out = {}
for i, style in enumerate(styles):
    classes = (style_image(style, (1024, 1024), seed=first + i).labels > 0).astype(np.uint8)[None]
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        label_block(classes, (0, 0, 0), (1, 2048, 2048), 2, options)
        times.append(time.perf_counter() - start)
    out[style] = statistics.median(times) * 1e3
print(json.dumps(out))
"""


def _block_ms(root: Path, styles: str, reps: int) -> dict:
    """label_block's median ms per style, in a process importing fastunet from ``root``."""
    env = {**os.environ, "PYTHONPATH": str(root)}
    done = subprocess.run([sys.executable, "-c", _TIME_BLOCKS, styles, str(reps), str(FIRST_SEED)], env=env,
                          capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"label_block timing failed ({root}):\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--styles", default="classic,clumped,small")
    parser.add_argument("--reps", type=int, default=15)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--against", help="a git revision whose label_block is timed too")
    parser.add_argument("--out", default="label-runs")
    args = parser.parse_args(argv)
    from scipy import ndimage

    from fastunet.bench.results import print_result, write_result
    from fastunet.synthetic_styles import style_image

    styles = args.styles.split(",")
    repo = Path(__file__).resolve().parent.parent
    figures, ratios = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        roots = {"label_block": repo}
        if args.against:
            tree = Path(tmp) / "against"
            subprocess.run(["git", "-C", str(repo), "worktree", "add", "--detach", "-f", str(tree), args.against],
                           check=True, capture_output=True)
            roots["against"] = tree
        try:
            rounds: dict = {name: [] for name in roots}
            for r in range(args.rounds):
                for name in (list(roots) if r % 2 == 0 else list(roots)[::-1]):
                    rounds[name].append(_block_ms(roots[name], args.styles, args.reps))
        finally:
            if args.against:
                subprocess.run(["git", "-C", str(repo), "worktree", "remove", "--force", str(roots["against"])],
                               capture_output=True)
    for i, style in enumerate(styles):
        classes = (style_image(style, (1024, 1024), seed=FIRST_SEED + i).labels > 0).astype(np.uint8)
        scipy_ms = statistics.median(_median_ms(lambda: [ndimage.label(classes == c, output=np.uint32)
                                                         for c in (0, 1)], args.reps) for _ in range(args.rounds))
        ours = statistics.median(x[style] for x in rounds["label_block"])
        figures[f"{style}.label_block_ms"] = ours
        figures[f"{style}.scipy_labels_ms"] = scipy_ms
        ratios[f"{style}.scipy_labels_vs_label_block"] = scipy_ms / ours
        if args.against:
            theirs = statistics.median(x[style] for x in rounds["against"])
            figures[f"{style}.against_label_block_ms"] = theirs
            ratios[f"{style}.against_vs_label_block"] = theirs / ours
    bare = _process_cpu("import numpy", 5)  # numpy, which the engine imports anyway
    figures["scipy_import_cpu_s"] = _process_cpu("import scipy.ndimage", 5) - bare
    commit = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    path = write_result("label-runs", figures, ratios, out_dir=Path(args.out),
                        extra={"reps": args.reps, "rounds": args.rounds, "styles": args.styles,
                               "first_seed": FIRST_SEED, "against": args.against, "commit": commit})
    print_result(figures, ratios, path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
