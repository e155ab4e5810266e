"""Training on the CPU: the default recipe's network and tile, fp32 against bf16 autocast.

Two parts, each in interleaved rounds (the order alternating), medians:

- ``step``: one optimizer step (forward, the weighted loss, backward, Adam) of the default
  recipe's network (:data:`fastunet.default_model.TRAIN_ARGS`: base 16, depth 3, one 316 x 316
  tile) on a fixed random tile, in four variants: fp32 and bf16 autocast, each with the
  network and tile contiguous and channels-last (what :func:`fastunet.train.train` uses on
  the CPU for a 2D network).
- ``train``: :func:`fastunet.train.train` itself (augmentation, weights, bookkeeping
  included) for ``--iterations`` steps on synthetic images of the training styles, with
  ``amp="none"`` and ``amp="bf16"`` (the same seed); its tiles a second.

    python benchmarks/train_cpu.py --out train-cpu

The result is a JSON file in ``--out`` to copy to ``benchmarks/results/``. A CPU measurement on
whatever else the machine is doing: only the ratios of one run compare. bf16 needs a CPU with
bf16 matrix units (AMX or AVX512-BF16).
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import tempfile
import time
from pathlib import Path


def step_times(rounds: int) -> dict:
    """Seconds of one training step per variant (medians of ``rounds``)."""
    import torch

    from fastunet.default_model import recipe_config
    from fastunet.model import ReferenceUNet
    from fastunet.train.loss import weighted_cross_entropy

    config = recipe_config()
    torch.manual_seed(0)
    x = torch.randn(1, 1, config.tile, config.tile)
    classes = config.unet_config(1).num_classes
    target = torch.randint(0, classes, (1, config.out_tile, config.out_tile), dtype=torch.uint8)
    weight = torch.rand(1, config.out_tile, config.out_tile)
    variants = {"fp32": (False, torch.contiguous_format), "fp32_channels_last": (False, torch.channels_last),
                "bf16": (True, torch.contiguous_format), "bf16_channels_last": (True, torch.channels_last)}
    state = {}
    for name, (_, layout) in variants.items():
        model = ReferenceUNet(config.unet_config(1)).to(memory_format=layout)
        state[name] = (model, torch.optim.Adam(model.parameters(), lr=1e-3))

    def step(name: str) -> float:
        amp, layout = variants[name]
        model, optimizer = state[name]
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            logits = model(x.to(memory_format=layout))
        loss = weighted_cross_entropy(logits, target, weight)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return time.perf_counter() - start

    for name in variants:  # oneDNN's first calls create their primitives
        step(name), step(name)
    seconds: dict = {name: [] for name in variants}
    names = list(variants)
    for r in range(rounds):
        for name in (names if r % 2 == 0 else names[::-1]):
            seconds[name].append(step(name))
    return {name: statistics.median(v) for name, v in seconds.items()}


def train_rates(iterations: int, rounds: int, images: int) -> dict:
    """Tiles a second of :func:`fastunet.train.train` with each ``amp`` (medians of ``rounds``)."""
    import numpy as np

    from fastunet.default_model import recipe_config, style_of
    from fastunet.default_seeds import TRAIN_SEEDS
    from fastunet.synthetic_styles import style_image
    from fastunet.train import train

    drawn = [style_image(style_of(seed), (512, 512), seed=seed) for seed in TRAIN_SEEDS[:images]]
    image = np.stack([d.image for d in drawn])
    labels = np.stack([d.labels for d in drawn])
    rates: dict = {"none": [], "bf16": []}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(rounds):
            for amp in (("none", "bf16") if r % 2 == 0 else ("bf16", "none")):
                config = dataclasses.replace(recipe_config(), iterations=iterations, val_fraction=0.0,
                                             checkpoint_every=iterations, amp=amp, lr_period=iterations)
                result = train(image, labels, Path(tmp) / f"{amp}-{r}.safetensors", config=config, progress=False,
                               axes="ZYX")
                rates[amp].append(result.tiles_per_second)
    return {amp: statistics.median(v) for amp, v in rates.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=8, help="rounds of the step part")
    parser.add_argument("--train-rounds", type=int, default=3, help="rounds of the train part")
    parser.add_argument("--iterations", type=int, default=60, help="steps of each train() run")
    parser.add_argument("--images", type=int, default=4, help="synthetic training images (512 x 512)")
    parser.add_argument("--out", default="train-cpu")
    args = parser.parse_args(argv)
    from fastunet.bench.results import print_result, write_result
    from fastunet.devices import cpu_bf16_units

    figures: dict = {"bf16_units": cpu_bf16_units()}
    steps = step_times(args.rounds)
    for name, seconds in steps.items():
        figures[f"step.{name}_ms"] = seconds * 1e3
    rates = train_rates(args.iterations, args.train_rounds, args.images)
    for amp, rate in rates.items():
        figures[f"train.{amp}_tiles_per_s"] = rate
    ratios = {f"step.{name}_vs_fp32": steps["fp32"] / seconds for name, seconds in steps.items() if name != "fp32"}
    ratios["train.bf16_vs_none"] = rates["bf16"] / rates["none"]
    path = write_result("train-cpu", figures, ratios, out_dir=Path(args.out),
                        extra={"rounds": args.rounds, "train_rounds": args.train_rounds,
                               "iterations": args.iterations, "images": args.images})
    print_result(figures, ratios, path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
