"""Output kinds of a segmentation: what ``output_kind=`` takes and what a call returns.

* ``"instances"``: object ids (uint32, uint64 when a volume needs more), the connected
  components of the foreground (:mod:`fastunet.engine.instances`);
* ``"labels"``: the argmax class map (uint8);
* ``"probs"``: class probabilities (float16, ``(K, ...)``).

``output_kind`` takes one kind, ``"both"`` (labels and probabilities, kept for
compatibility), several (a tuple or list, or a comma-separated string
``"instances,probs"``), or None: ``"instances"`` for two-class models (background and
objects), ``"labels"`` otherwise. Several kinds return a tuple in the order instances,
labels, probs (of those asked); ``"both"`` returns ``(labels, probs)``.
"""

from __future__ import annotations

from .errors import UserError

__all__ = ["KINDS", "parse_kinds", "kinds_record", "network_output", "pick"]

KINDS = ("instances", "labels", "probs")


def parse_kinds(value, num_classes: int) -> tuple[str, ...]:
    """``output_kind=`` as a tuple of kinds in canonical order.

    Raises
    ------
    UserError
        An unknown kind, none at all, or instances from a one-class model.
    """
    if value is None:
        return ("instances",) if num_classes == 2 else ("labels",)
    if isinstance(value, str):
        items = ["labels", "probs"] if value.strip() == "both" else [v.strip() for v in value.split(",")]
    elif isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        items = [v.strip() for v in value]
    else:
        raise UserError(f'output_kind= expects a kind such as "instances" or several ("instances,probs"); got {value!r}.')
    bad = [v for v in items if v not in KINDS]
    if bad or not items:
        raise UserError(
            f'output_kind= expects kinds from instances, labels, probs (or "both"), e.g. "instances" or '
            f'"instances,probs"; got {value!r}.'
        )
    if "instances" in items and num_classes < 2:
        raise UserError(
            f'output_kind="instances" needs a model with at least two classes (background and objects); this model '
            f'has {num_classes}: use output_kind="labels" or "probs".'
        )
    return tuple(k for k in KINDS if k in items)


def kinds_record(kinds: tuple[str, ...]) -> str:
    """The kinds as recorded in an output (``"both"`` for labels and probs, as before)."""
    return "both" if kinds == ("labels", "probs") else ",".join(kinds)


def network_output(kinds: tuple[str, ...], confidence: bool = False, compact: bool = False) -> str:
    """What the network must produce for ``kinds``: ``"labels"``, ``"probs"`` or ``"both"``
    (``confidence``: instances whose clean-up needs the probabilities too, ``min_confidence``);
    ``"confidence"`` (the labels and each voxel's object probability, uint8 in steps of 1/255)
    instead of ``"both"`` when only the clean-up needs probabilities and the backend has that
    output (``compact``)."""
    need_labels = "instances" in kinds or "labels" in kinds
    if compact and confidence and "instances" in kinds and "probs" not in kinds:
        return "confidence"
    need_probs = "probs" in kinds or ("instances" in kinds and confidence)
    return "both" if need_labels and need_probs else ("probs" if need_probs else "labels")


def pick(kinds: tuple[str, ...], arrays: dict):
    """What a segmentation returns: the one array, or a tuple in the order of ``kinds``."""
    if len(kinds) == 1:
        return arrays.get(kinds[0])
    return tuple(arrays.get(k) for k in kinds)
