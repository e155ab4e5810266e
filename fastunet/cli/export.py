"""``fastunet export``: a model file as a bioimage.io model package (``.bmz.zip``)."""

from __future__ import annotations

import argparse

from .common import add_common_options, epilog

__all__ = ["add_parser", "run"]

EXAMPLES = """\
fastunet export nuclei.safetensors -o nuclei.bmz.zip
fastunet export nuclei.safetensors -o nuclei.bmz.zip --name "Nuclei U-Net" --author "Ada Lovelace"
fastunet segment stack.zarr -o labels.zarr --model nuclei.bmz.zip    # and back
"""


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "export",
        help="write a model as a bioimage.io model package (needs fastunet[bioimageio])",
        description="Write a bioimage.io 0.5 model package: pytorch_state_dict weights with the architecture "
        "as a source file (a same-size wrapper: mirrored borders as in the paper, output the size of the "
        "input), the same network as TorchScript and ONNX weights (deepImageJ, QuPath), the normalization as preprocessing, test input and output tensors, a cover image and "
        "documentation; the safetensors model travels inside too, so that --model PACKAGE reads it back "
        "without unpickling. The package is checked with bioimageio.core's test_model unless --no-test.",
        epilog=epilog(EXAMPLES), formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("model", nargs="?", help="fastunet .safetensors model file (default: the bundled model)")
    p.add_argument("-o", "--output", required=True, metavar="PATH", help="package to write, e.g. model.bmz.zip")
    p.add_argument("--name", help="the model's name in the package (default: from the file name)")
    p.add_argument("--description", help="one sentence on what the model segments")
    p.add_argument("--author", action="append", metavar="NAME",
                   help="an author (repeat for several; default: the fastunet developers)")
    p.add_argument("--license", default="BSD-3-Clause", help="SPDX license of the weights (default BSD-3-Clause)")
    p.add_argument("--test-shape", metavar="Y,X", help="size of the test image (default: a valid size near 256)")
    p.add_argument("--weights", metavar="FORMATS",
                   help="weight formats to write, comma-separated, among pytorch_state_dict, torchscript, onnx "
                   "(default: all three; the state dict is always written)")
    p.add_argument("--no-test", action="store_true", help="skip bioimageio.core's test_model on the package")
    p.add_argument("--overwrite", action="store_true", help="replace an existing package")
    add_common_options(p, quiet="no summary line")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    from ..bioimageio import export_package
    from ..modelfile import default_model_path
    from .common import parse_sizes

    model = args.model if args.model is not None else default_model_path()
    result = export_package(model, args.output, name=args.name, description=args.description, authors=args.author,
                            license=args.license, test_shape=parse_sizes(args.test_shape, "--test-shape", "256,256"),
                            test=not args.no_test, weight_formats=args.weights, overwrite=args.overwrite)
    if not args.quiet:
        checked = "passed bioimageio.core's test_model" if result.tested else "not tested (--no-test)"
        print(f"wrote {result.path} (bioimage.io {result.format_version}, {result.size / 1e6:.1f} MB, "
              f"{', '.join(result.weight_formats)} weights): {checked}")
    return 0
