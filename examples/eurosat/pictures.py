"""Make the pictures in docs/img: ResNet18 on EuroSAT (searched) and annotated ResNet50 / ViT-B/16.

    python examples/eurosat/pictures.py          # needs ../shared/data and a ResNet18 checkpoint
    python examples/eurosat/pictures.py --annotated-only   # only the untrained ResNet50 / ViT-B/16 pictures

Compresses the trained ResNet18 with fxquant's default search (accuracy mode) on 2,000 training
images (GPTQ statistics from 1,024 other training images, as the README's results), measures held-out test accuracy of the float model, of fixed 8..1-bit
models and of the searched model, then writes the annotated graph (SVG + HTML)
and the report plot. ResNet50 and ViT-B/16 (untrained, annotated but not
searched) show that large graphs stay legible.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import torchvision

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import fxquant  # noqa: E402
from fxquant import passes  # noqa: E402
from examples.eurosat.common import load_trained  # noqa: E402
from fxquant.data.eurosat import eurosat_splits  # noqa: E402

IMG = ROOT / "docs" / "img"


def main() -> None:
    model, meta = load_trained("resnet18")
    splits = eurosat_splits(seed=meta.get("split_seed", 0), calib_size=2000)
    qmodel = fxquant.compress(model, splits.calib_loader(), stats_loader=splits.stats_loader())
    report = fxquant.report(qmodel)
    test = fxquant.AccuracyOracle(splits.test_loader())
    sweep = {bits: test(fxquant.quantize(model, bits)) for bits in range(8, 0, -1)}
    float_acc, searched = test(model), test(qmodel)
    drawing = fxquant.draw(qmodel, IMG / "resnet18_eurosat_graph")
    fxquant.plot(report, IMG / "resnet18_eurosat_report.png", sweep=sweep,
                 results={"default search (accuracy mode, T_init 0.5)": (report.average_bits, searched),
                          "float32": (32.0, float_acc)},
                 title=f"ResNet18 on EuroSAT: {report.average_bits:.2f} average bits, "
                       f"test accuracy {float_acc:.2f}% -> {searched:.2f}%")
    annotated_pictures()
    summary = {"float_test_acc": float_acc, "searched_test_acc": searched, "average_bits": report.average_bits,
               "fixed_sweep_test_acc": sweep, "layout": drawing.layout}
    (IMG / "resnet18_eurosat_pictures.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps(summary, indent=1))


def annotated_pictures() -> None:
    """ResNet50 and ViT-B/16, untrained (seeded, so every run draws the same importances), annotated only."""
    for name in ("resnet50", "vit_b_16"):
        torch.manual_seed(0)
        gm = passes.trace(torchvision.models.get_model(name, weights=None, num_classes=10).eval())
        passes.annotate_importance(gm)
        fxquant.draw(gm, IMG / f"{name}_annotated")


if __name__ == "__main__":
    torch.set_num_threads(max(1, torch.get_num_threads()))
    if sys.argv[1:] == ["--annotated-only"]:  # no data needed: the two untrained pictures
        annotated_pictures()
    else:
        main()
