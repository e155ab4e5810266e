"""``fastunet info``: a model file's config, size, context and valid tile sizes, and its card
(intended use, what it is not for, training styles, scores per style) when it has one."""

from __future__ import annotations

import argparse

from .common import add_common_options, epilog, model_argument

__all__ = ["add_parser", "run"]

EXAMPLES = """\
fastunet info model.safetensors
fastunet info model.bmz.zip        # a bioimage.io package written by fastunet export
fastunet info 3d                   # the bundled 3D model
"""


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("info", help="print a model file's config, size and valid tile sizes",
                       description="Print a model's config, parameter count, context and valid tile sizes.",
                       epilog=epilog(EXAMPLES), formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="a fastunet .safetensors model file, or a bioimage.io package from fastunet export")
    add_common_options(p, quiet="(no effect: info prints its table only)")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    from .. import geometry
    from ..model import count_parameters
    from ..modelfile import ModelBundle, bundled_model, read_model

    loaded = model_argument(args.model)
    bundle = loaded if isinstance(loaded, ModelBundle) else read_model(bundled_model(args.model))  # "3d": bundled
    model, cfg = bundle.module, bundle.config
    ctx = geometry.context(cfg.depth)
    # A few sizes from the smallest valid one up to ~1100 px (more than one GPU tile's worth
    # of output), plus the paper's 572 and 1052 when this depth can take them.
    smallest = geometry.min_input_size(cfg.depth)
    sizes = geometry.valid_input_sizes(cfg.depth, max_size=max(1100, smallest + 6 * 2**cfg.depth))
    picks = [s for s in sizes if s in (572, 1052)]
    shown = sorted(set(sizes[:: max(1, len(sizes) // 6)] + picks))
    print(f"model          {args.model}")
    for key, value in cfg.to_dict().items():
        print(f"{key:<14} {value}")
    print(f"widths         {', '.join(str(w) for w in cfg.widths)}")
    print(f"conv layers    {cfg.num_conv_layers}")
    print(f"parameters     {count_parameters(model):,}")
    print(f"context        {ctx} px per side")
    print(f"normalization  {bundle.normalization.to_dict()}")
    print("valid tiles    " + ", ".join(f"{s}->{geometry.output_size(s, cfg.depth)}" for s in shown))
    if cfg.spatial_dims == 3:  # Z has its own context and tile sizes where it is pooled by 1
        z = cfg.axis_pools[0]
        z_sizes = geometry.valid_input_sizes(z, max_size=geometry.min_input_size(z) + 8 * geometry.grid_step(z))
        print(f"network        {cfg.describe()}")
        print(f"context Z      {geometry.context(z)} voxels per side")
        print("valid tiles Z  " + ", ".join(f"{s}->{geometry.output_size(s, z)}" for s in z_sizes))
    for key, value in (bundle.extra or {}).items():
        if key == "calibration" and isinstance(value, dict) and "shift" in value:
            print(f"{key:<14} {_calibration(value)}")
        elif key == "init" and isinstance(value, dict) and "sha256" in value:
            print(f"{key:<14} {_init(value)}")
        elif key != "card":
            print(f"{key:<14} {value}")
    if isinstance((bundle.extra or {}).get("card"), dict):
        print_card(bundle.extra["card"])
    return 0


def _calibration(record: dict) -> str:
    """``extra["calibration"]`` of :func:`fastunet.default_model.calibrate` in one line."""
    import math

    shift = float(record["shift"])
    seeds = record.get("seeds") or ["?", "?"]
    means = ", ".join(f"{float(k):+.1f}: {v:.4f}" for k, v in (record.get("mean_f1") or {}).items())
    line = (f"foreground logit {shift:+.2f} (foreground from a probability of {1 / (1 + math.exp(shift)):.2f}), "
            f"chosen by the training styles' mean F1 on seeds {seeds[0]}-{seeds[-1]}: {means}")
    if "min_confidence" in record:
        tried = ", ".join(f"{float(k):.2f}: {v:.4f}" for k, v in (record.get("min_confidence_mean_f1") or {}).items())
        line += (f"; objects kept from a mean object probability of {float(record['min_confidence']):.2f} "
                 f"(min_confidence, chosen the same way: {tried})")
    return line


def _init(record: dict) -> str:
    """``extra["init"]`` (the model file a fine-tuning started from) in one line."""
    made = record.get("trained_with")
    return (f"fine-tuned from {record.get('name')} (sha256 {record['sha256']})"
            + (f", itself trained with: {made}" if made else ""))


def print_card(card: dict) -> None:
    """The model card: what it is for and not for, how it was trained, its scores per style."""
    import textwrap

    def wrapped(label: str, text: str) -> None:
        print(textwrap.fill(text, 100, initial_indent=f"{label:<14} ", subsequent_indent=" " * 15))

    print("\nmodel card")
    wrapped("intended use", card.get("intended_use", ""))
    for i, item in enumerate(card.get("not_for", ())):
        wrapped("not for" if i == 0 else "", f"- {item}")
    for name, text in card.get("training_styles", {}).items():
        wrapped("trained on" if name == next(iter(card["training_styles"])) else "", f"{name}: {text}")
    print(f"scores         instance F1 at IoU 0.5 on {card.get('scored_on', '?')} ({card.get('results_file', '')}),")
    print("               objects cleaned up (as segment writes them) / as the network made them:")
    print(f"               {'style':<16}{'':<10}{'nuclei':>7} {'F1':>6} {'prec':>6} {'recall':>6} {'specks':>7} "
          f"{'F1 raw':>7} {'specks':>7}")
    for name, r in card.get("scores", {}).items():
        on, off = r["on"], r["off"]
        print(f"               {name:<16}{'held out' if r['held_out'] else 'training':<10}{r['nuclei']:>7} "
              f"{on['instance_f1']:>6.3f} {on['precision']:>6.3f} {on['recall']:>6.3f} {on['specks']:>7.1%} "
              f"{off['instance_f1']:>7.3f} {off['specks']:>7.1%}")
