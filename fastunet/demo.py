"""``fastunet demo``: a synthetic nuclei volume, segmented end to end, with a picture.

Writes into one folder:

* ``volume.zarr`` the synthetic stack (uint16, ``(Z, Y, X)``, zarr v3, chunks of one plane
  of 512 x 512), and ``truth.zarr`` its instance labels (what the scores are measured on);
* ``labels.zarr`` the segmentation by ``fastunet segment`` (the bundled default model unless
  another is given);
* ``preview.png`` the middle plane: image, predicted objects overlaid, truth outlines.

and prints the foreground IoU and instance F1 of the segmentation against the truth.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np

from .errors import UserError

__all__ = ["run_demo", "DEMO_FILES"]

DEMO_FILES = ("volume.zarr", "truth.zarr", "labels.zarr", "preview.png")


def _prepare(folder: Path, overwrite: bool) -> None:
    """Make ``folder``; an existing one must be empty or hold only a previous demo's files."""
    if folder.exists() and not folder.is_dir():
        raise UserError(f'{str(folder)!r} exists and is not a folder; choose another, e.g. folder="fastunet-demo-2".')
    if folder.is_dir():
        present = sorted(p.name for p in folder.iterdir())
        if present and not overwrite:
            raise UserError(f"{str(folder)!r} is not empty; pass overwrite=True to replace a previous demo there.")
        foreign = [name for name in present if name not in DEMO_FILES]
        if foreign:
            raise UserError(
                f"{str(folder)!r} holds files the demo did not write ({', '.join(foreign[:4])}); "
                "choose an empty or new folder."
            )
        for name in present:
            path = folder / name
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    folder.mkdir(parents=True, exist_ok=True)


def run_demo(folder: str | os.PathLike = "fastunet-demo", *, shape=(8, 1024, 1024), seed: int = 0, model=None,
             device=None, backend: str = "auto", dtype: str | None = None, overwrite: bool = False,
             progress: bool = True):
    """Generate, segment, score and preview a synthetic volume; returns the
    :class:`~fastunet.evaluate.Evaluation` of the segmentation against the truth."""
    import zarr

    from .figures import overlay_figure
    from .metrics import score
    from .segmentation import Segmenter
    from .synthetic import synthetic_volume

    shape = tuple(int(n) for n in shape)
    if len(shape) != 3 or min(shape) < 1:
        raise UserError(f"Expected a demo shape Z,Y,X of positive sizes; got {shape}.")
    folder = Path(folder)
    segmenter = Segmenter(model, device=device, backend=backend, dtype=dtype)  # model errors before any work
    if not folder.exists():  # where the demo's folder goes must take writes (fastunet.paths)
        from .paths import check_writable_folder

        check_writable_folder(folder.absolute().parent, what="demo folder")
    _prepare(folder, overwrite)
    image, truth = synthetic_volume(shape, seed=seed, dtype="uint16")
    chunks = (1, min(512, shape[1]), min(512, shape[2]))
    for name, data in (("volume.zarr", image), ("truth.zarr", truth)):
        array = zarr.create_array(str(folder / name), shape=shape, chunks=chunks, dtype=data.dtype,
                                  dimension_names=("z", "y", "x"))
        array[:] = data
    print(f"wrote {folder / 'volume.zarr'} {shape} uint16 (synthetic nuclei, seed {seed})")
    with segmenter:
        labels = segmenter.segment(str(folder / "volume.zarr"), str(folder / "labels.zarr"), axes="ZYX",
                                   progress=progress)  # object ids, cleaned up, as segment writes them
        from .segmentation import summary_line

        print(summary_line(segmenter.last_summary, folder / "labels.zarr"))
    predicted = np.asarray(labels[:])
    result = score(list(predicted), list(truth))
    mid = shape[0] // 2
    overlay_figure(folder / "preview.png", image[mid], predicted[mid], truth=truth[mid],
                   title=f"fastunet demo: plane {mid} of {shape[0]}")
    print(f"scores against the truth: {result}")
    print(f"wrote {folder / 'preview.png'}")
    return result
