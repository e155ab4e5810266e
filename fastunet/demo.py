"""``fastunet demo``: a synthetic nuclei volume, segmented end to end, with a picture.

Writes into one folder:

* ``volume.zarr`` the synthetic stack (uint16, ``(Z, Y, X)``, zarr v3, chunks of one plane
  of 512 x 512), and ``truth.zarr`` its instance labels (what the scores are measured on);
* ``labels.zarr`` the segmentation by ``fastunet segment`` (the bundled default model unless
  another is given);
* ``preview.png`` the middle plane: image, predicted objects overlaid, truth outlines.

and prints the foreground IoU and instance F1 of the segmentation against the truth.

Before anything is generated the demo says what it will take (:func:`check_demo_size`: memory,
disk, and time at the CPU rate of the README's demo) and refuses a size this machine cannot
hold. Its folder is checked by the rule of every output (:func:`fastunet.paths.check_output_file`):
an existing one must be empty, or (with ``overwrite=True``) hold only files a demo wrote, each
recognized as such (``volume.zarr`` and ``truth.zarr`` carry ``attrs["fastunet_demo"]``,
``labels.zarr`` is a fastunet output, ``preview.png`` matches the digest recorded in
``fastunet-demo.json``), so that a user's own ``volume.zarr`` is never replaced.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import UserError

__all__ = ["run_demo", "check_demo_size", "check_demo_folder", "DemoEstimate", "DEMO_FILES"]

MANIFEST = "fastunet-demo.json"
DEMO_FILES = ("volume.zarr", "truth.zarr", "labels.zarr", "preview.png", MANIFEST)
# What one voxel of the demo takes, measured on this repository's 2-core CPU (peak resident
# memory of `fastunet demo` at 2 x 512 x 512 and 8 x 512 x 512: 682 and 758 MB, so ~48 B per
# voxel above ~0.65 GB; its files ~1.1 B per voxel), and the CPU rate of the README's demo.
_BASE_BYTES = 0.7e9
_BYTES_PER_VOXEL = 50
_DISK_PER_VOXEL = 1.5
_CPU_VOXELS_PER_S = 0.5e6


@dataclass(frozen=True)
class DemoEstimate:
    """What a demo of ``shape`` takes (estimates): bytes of memory and disk, seconds on a CPU."""

    shape: tuple[int, int, int]
    memory: float
    disk: float
    cpu_seconds: float

    def __str__(self) -> str:
        minutes = self.cpu_seconds / 60
        when = f"{self.cpu_seconds:.0f} s" if minutes < 2 else f"{minutes:.0f} min" if minutes < 120 else \
            f"{minutes / 60:.0f} h"
        disk = f"{self.disk / 1e6:.0f} MB" if self.disk < 1e10 else f"{self.disk / 1e9:.0f} GB"
        return (f"{' x '.join(map(str, self.shape))} voxels: about {self.memory / 1e9:.1f} GB of memory, {disk} on "
                f"disk and {when} on a 2-core CPU (estimates)")


def check_demo_size(shape, *, device=None, folder=None) -> DemoEstimate:
    """Check a demo shape (three positive sizes Z, Y, X) and what it would take; raises
    :class:`UserError` when this machine's free memory (or, given ``folder``, its disk) cannot
    hold it, before anything is generated."""
    import psutil

    try:
        shape = tuple(int(n) for n in shape)
    except (TypeError, ValueError):
        raise UserError(f"Expected a demo shape Z,Y,X of positive sizes; got {shape}.") from None
    if len(shape) != 3 or min(shape) < 1:
        raise UserError(f"Expected a demo shape Z,Y,X of positive sizes; got {shape}.")
    voxels = float(np.prod(shape, dtype=np.float64))
    estimate = DemoEstimate(shape, _BASE_BYTES + _BYTES_PER_VOXEL * voxels, _DISK_PER_VOXEL * voxels,
                            voxels / _CPU_VOXELS_PER_S)
    free = psutil.virtual_memory().available
    if estimate.memory > free:
        raise UserError(f"A demo needs more memory than is free ({free / 1e9:.1f} GB): {estimate}; choose a "
                        "smaller shape, e.g. shape=8,1024,1024.")
    if folder is not None:
        place = Path(folder).absolute()
        while not place.exists() and place.parent != place:
            place = place.parent
        disk = shutil.disk_usage(place).free
        if estimate.disk > disk:
            raise UserError(f"A demo needs more disk than is free in {str(place)!r} ({disk / 1e6:.0f} MB): "
                            f"{estimate}; choose a smaller shape or another folder.")
    return estimate


def _sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _is_demo_file(path: Path) -> bool:
    """Did a demo write ``path`` (one of :data:`DEMO_FILES`, recognized by its marks)?"""
    from .io.outputs import fastunet_attrs

    if path.name in ("volume.zarr", "truth.zarr"):
        import zarr

        try:
            return "fastunet_demo" in zarr.open(str(path), mode="r").attrs
        except Exception:  # noqa: BLE001 - not a zarr: not the demo's
            return False
    if path.name == "labels.zarr":
        return fastunet_attrs(path) is not None
    manifest = _read_manifest(path.parent)
    if path.name == MANIFEST:
        return manifest is not None
    if path.name == "preview.png" and manifest is not None and path.is_file():
        return manifest.get("preview.png") == _sha256(path)
    return False


def _read_manifest(folder: Path) -> dict | None:
    try:
        data = json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    return data.get("fastunet_demo") if isinstance(data, dict) else None


def _only_demo_files(folder: Path) -> None:
    """``overwrite=True`` replaces a demo folder only when everything in it is a demo's."""
    if not folder.is_dir():
        raise UserError(f'{str(folder)!r} exists and is not a folder; choose another, e.g. folder="fastunet-demo-2".')
    foreign = [p.name for p in sorted(folder.iterdir()) if not _is_demo_file(p)]
    if foreign:
        raise UserError(f"{str(folder)!r} holds files the demo did not write ({', '.join(foreign[:4])}); "
                        "overwrite=True replaces only a demo's own files: choose an empty or new folder.")


def check_demo_folder(folder, *, overwrite: bool = False, model=None) -> Path:
    """The demo's folder, checked before any work (:func:`fastunet.paths.check_output_file`):
    new, empty, or (with ``overwrite``) holding only a previous demo's files."""
    from .paths import check_output_file

    folder = Path(folder)
    empty = folder.is_dir() and not any(folder.iterdir())
    return check_output_file(folder, what="demo folder", folder=True, overwrite=overwrite, own=empty,
                             replaceable=_only_demo_files, make_parents=True,
                             model=model if isinstance(model, (str, os.PathLike)) else None)


def _prepare(folder: Path, overwrite: bool, model=None) -> None:
    """Make ``folder``, after removing a previous demo's files (checked to be its own)."""
    check_demo_folder(folder, overwrite=overwrite, model=model)
    if folder.is_dir():
        for path in sorted(folder.iterdir()):
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

    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed < 2**32:
        raise UserError(f"seed= expects a whole number from 0 to {2**32 - 1}; got {seed!r}.")
    folder = Path(folder)
    estimate = check_demo_size(shape, folder=folder)
    shape = estimate.shape
    check_demo_folder(folder, overwrite=overwrite, model=model)
    segmenter = Segmenter(model, device=device, backend=backend, dtype=dtype)  # model errors before any work
    print(f"demo: {estimate}")
    _prepare(folder, overwrite, model)
    image, truth = synthetic_volume(shape, seed=seed, dtype="uint16")
    chunks = (1, min(512, shape[1]), min(512, shape[2]))
    mark = {"fastunet_demo": {"seed": int(seed), "shape": list(shape)}}
    for name, data in (("volume.zarr", image), ("truth.zarr", truth)):
        array = zarr.create_array(str(folder / name), shape=shape, chunks=chunks, dtype=data.dtype,
                                  dimension_names=("z", "y", "x"), attributes=mark)
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
    (folder / MANIFEST).write_text(json.dumps({"fastunet_demo": {"preview.png": _sha256(folder / "preview.png")}}))
    print(f"scores against the truth: {result}")
    print(f"wrote {folder / 'preview.png'}")
    return result
