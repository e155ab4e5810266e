"""``fastunet info``: a model file's config, size, context and valid tile sizes."""

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
    if bundle.extra:
        for key, value in bundle.extra.items():
            print(f"{key:<14} {value}")
    return 0
