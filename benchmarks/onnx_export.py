"""ONNX export side by side: file size, onnxruntime latency and held-out accuracy (issue 16).

    python benchmarks/onnx_export.py                       # EuroSAT ResNet18 and ResNet50 checkpoints
    python benchmarks/onnx_export.py --models resnet18 --limit 500 --rounds 3   # quicker look
    python benchmarks/onnx_export.py --smoke --out-json /tmp/o.json --markdown /tmp/o.md   # synthetic, seconds
    python benchmarks/onnx_export.py --render docs/results/onnx_export.json   # the markdown section only

For each model: the trained checkpoint (``examples/eurosat/train.py``) is compressed with
the search restricted to the widths ONNX stores natively (``candidates=(2, 4, 8)``; the
search scores the usual 2,000-image calibration subset of the training split, GPTQ
statistics come from 1,024 other training images, as ``examples/compress_eurosat.py``),
then five versions are measured: PyTorch float32, fxquant (packed-only PyTorch
forward), the float32 ONNX file, ours with DequantizeLinear weights
(``packing="container"``) and ours with bit-stream weights. Each gets its file size,
its held-out test accuracy and its latency at batch 1 and 64 (same process,
interleaved rounds, ratio to the float32 ONNX model; onnxruntime sessions from
:func:`fxquant.export.onnx_session` with ``--threads`` intra-op threads, PyTorch with
as many threads). Targets checked: the codes of the (2, 4, 8) search take at most
1.05 x sum(n * b / 8) bytes (scales and zero points counted apart), and onnxruntime's
held-out accuracy equals PyTorch's. Writes the JSON (``--out-json``) and the markdown
section for ``docs/benchmarks.md`` (``--markdown``); exits 1 if a target is missed.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import fxquant  # noqa: E402
from benchmarks.latency import interleaved_latency  # noqa: E402
from fxquant.export import ONNX_NATIVE_BITS, export_onnx, onnx_predict, onnx_session  # noqa: E402
from fxquant.export.check import compare_onnx  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
VERSIONS = ("pytorch float32", "fxquant (PyTorch)", "ONNX float32", "ONNX DequantizeLinear", "ONNX bit-stream")
WEIGHT_TARGET = 1.05


class _Session:
    """An onnxruntime session called like a model (for the interleaved latency loop)."""

    def __init__(self, path, threads: int):
        self.session = onnx_session(path, threads=threads)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return onnx_predict(self.session, x)


def _accuracy(model, loader) -> tuple[float, int]:
    correct = total = 0
    with torch.inference_mode():
        for inputs, targets in loader:
            correct += int((model(inputs).argmax(dim=1) == targets).sum())
            total += int(targets.numel())
    return 100.0 * correct / total, total


def _limited(loader, limit: int | None):
    """The first ``limit`` images of ``loader`` (all when None), as a list of batches."""
    batches, seen = [], 0
    for inputs, targets in loader:
        if limit is not None and seen >= limit:
            break
        take = len(targets) if limit is None else min(len(targets), limit - seen)
        batches.append((inputs[:take], targets[:take]))
        seen += take
    return batches


def _eurosat_setup(name: str, args):
    from examples.eurosat.common import checkpoint_path, load_trained
    from fxquant.data.eurosat import eurosat_available, eurosat_splits

    ckpt = args.checkpoint_dir / f"eurosat_{name}_seed0.pt" if args.checkpoint_dir else checkpoint_path(name)
    if not ckpt.is_file():
        raise SystemExit(f"onnx_export: no checkpoint for {name} at {ckpt}; train it first with "
                         f"`python examples/eurosat/train.py --model {name}`")
    if not eurosat_available(args.root):
        raise SystemExit("onnx_export: EuroSAT not found: pass --root or set FXQUANT_EUROSAT_ROOT")
    model, meta = load_trained(name, path=ckpt)
    splits = eurosat_splits(args.root, seed=meta.get("split_seed", 0), calib_size=args.calib_size)
    test = _limited(splits.test_loader(batch_size=256), args.limit)
    return model, splits.calib_loader(), splits.stats_loader(), test, (3, 64, 64)


def _smoke_setup(name: str, args):
    """A random-init model on random 32x32 images: exercises every step in seconds (numbers meaningless)."""
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.get_model(name, weights=None, num_classes=10).eval()
    gen = torch.Generator().manual_seed(0)

    def batches(n, size=16):
        return [(torch.randn(size, 3, 32, 32, generator=gen), torch.randint(0, 10, (size,), generator=gen))
                for _ in range(n)]

    return model, batches(2), batches(1), batches(2), (3, 32, 32)


def run_model(name: str, args, workdir: Path) -> dict:
    model, calib, stats, test, input_shape = (_smoke_setup if args.smoke else _eurosat_setup)(name, args)
    print(f"[{name}] compressing with candidates {ONNX_NATIVE_BITS} ...", flush=True)
    t0 = time.perf_counter()
    qmodel = fxquant.compress(model, calib, stats_loader=stats, candidates=ONNX_NATIVE_BITS, verbose=False)
    search_s = time.perf_counter() - t0
    report = fxquant.report(qmodel)
    example = torch.zeros(1, *input_shape)
    fxq_bytes = fxquant.save(qmodel, workdir / f"{name}.fxq")
    float_pt = workdir / f"{name}_float.pt"
    torch.save(model.state_dict(), float_pt)
    exports = {
        "ONNX float32": export_onnx(model, workdir / f"{name}_float.onnx", example_input=example),
        "ONNX DequantizeLinear": export_onnx(qmodel, workdir / f"{name}_dq.onnx", example_input=example),
        "ONNX bit-stream": export_onnx(qmodel, workdir / f"{name}_bitstream.onnx", example_input=example,
                                       packing="bitstream"),
    }
    print(f"[{name}] accuracy on {sum(len(t) for _, t in test)} held-out images ...", flush=True)
    rows = {"pytorch float32": {"file_bytes": float_pt.stat().st_size, "file": "state_dict (.pt)"},
            "fxquant (PyTorch)": {"file_bytes": fxq_bytes, "file": ".fxq"}}
    rows["pytorch float32"]["accuracy"], images = _accuracy(model, test)
    rows["fxquant (PyTorch)"]["accuracy"], _ = _accuracy(qmodel, test)
    for version, result in exports.items():
        reference = model if version == "ONNX float32" else qmodel
        check = compare_onnx(reference, onnx_session(result.path, threads=args.threads), test)
        rows[version] = {"file_bytes": result.file_bytes, "file": ".onnx", "accuracy": check.onnx_accuracy,
                         "agreeing_with_pytorch": check.agreeing, "max_rel_diff": check.max_rel_diff,
                         "opset": result.opset, "weight_bytes": result.weight_bytes,
                         "grid_bytes": result.grid_bytes}
    models = {"pytorch float32": model, "fxquant (PyTorch)": qmodel,
              **{version: _Session(result.path, args.threads) for version, result in exports.items()}}
    for batch in (1, 64):
        print(f"[{name}] latency at batch {batch}, {args.rounds} interleaved rounds ...", flush=True)
        lat = interleaved_latency(models, "ONNX float32", batch, rounds=args.rounds, min_seconds=args.min_seconds,
                                  input_shape=input_shape)
        for version, value in lat.items():
            rows[version][f"ms_batch{batch}"] = value.ms
            rows[version][f"ratio_batch{batch}"] = value.ratio
    dq = exports["ONNX DequantizeLinear"]
    targets = {
        "weight_bytes_le_1.05x_ideal": dq.weight_bytes <= WEIGHT_TARGET * dq.ideal_bytes,
        "onnx_accuracy_equals_pytorch": all(rows[v]["accuracy"] == rows["fxquant (PyTorch)"]["accuracy"]
                                            for v in ("ONNX DequantizeLinear", "ONNX bit-stream"))
        and rows["ONNX float32"]["accuracy"] == rows["pytorch float32"]["accuracy"],
    }
    return {"model": name, "test_images": images, "average_bits": report.average_bits,
            "bits_used": sorted({layer.bits for layer in report.layers if layer.bits is not None}),
            "search_seconds": search_s, "ideal_weight_bytes": dq.ideal_bytes, "dq_weight_bytes": dq.weight_bytes,
            "dq_grid_bytes": dq.grid_bytes, "float32_weight_bytes": report.float32_bytes,
            "versions": rows, "targets": targets}


def _size(nbytes: float) -> str:
    return f"{nbytes / 2**20:.2f} MiB" if nbytes >= 2**20 else f"{nbytes / 2**10:.1f} KiB"


def render_markdown(data: dict) -> str:
    """The ``docs/benchmarks.md`` section for the JSON this script writes."""
    setup = data["setup"]
    lines = ["## ONNX export (EuroSAT, onnxruntime)" if not setup.get("smoke") else
             "## ONNX export (SMOKE RUN: random weights and data, numbers meaningless)", "",
             f"`python benchmarks/onnx_export.py` ({setup['date']}; torch {setup['torch']}, onnxruntime "
             f"{setup['onnxruntime']}, {setup['threads']} thread(s), {setup['rounds']} interleaved latency rounds). "
             f"The search uses only the widths ONNX stores natively, `candidates={tuple(ONNX_NATIVE_BITS)}`; "
             "latency ratios are to the float32 ONNX model (median of per-round ratios); accuracy on the "
             "held-out test split.", ""]
    for entry in data["models"]:
        lines += [f"**{entry['model']}**: {entry['average_bits']:.2f} average bits (widths used "
                  f"{entry['bits_used']}); codes {entry['dq_weight_bytes']:,} B for sum n*b/8 = "
                  f"{entry['ideal_weight_bytes']:,} B, + {entry['dq_grid_bytes']:,} B scales and zero points; "
                  f"{entry['test_images']:,} test images.", "",
                  "| version | file | size | top-1 | batch 1 ms (x ONNX float) | batch 64 ms (x ONNX float) |",
                  "|---|---|---:|---:|---:|---:|"]
        for version in VERSIONS:
            row = entry["versions"][version]
            lines.append(f"| {version} | {row['file']} | {_size(row['file_bytes'])} | {row['accuracy']:.2f}% | "
                         f"{row['ms_batch1']:.2f} ({row['ratio_batch1']:.2f}x) | "
                         f"{row['ms_batch64']:.1f} ({row['ratio_batch64']:.2f}x) |")
        met = ", ".join(f"{k}: {'met' if v else 'MISSED'}" for k, v in entry["targets"].items())
        lines += ["", f"Targets: {met}.", ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["resnet18", "resnet50"])
    parser.add_argument("--root", help="EuroSAT root (default ../shared/data)")
    parser.add_argument("--checkpoint-dir", type=Path, help="default: ~/.cache/fxquant/checkpoints")
    parser.add_argument("--calib-size", type=int, default=2000)
    parser.add_argument("--limit", type=int, help="use only the first N held-out test images")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--min-seconds", type=float, default=0.2)
    parser.add_argument("--smoke", action="store_true", help="random weights and data (tests the script)")
    parser.add_argument("--out-json", type=Path, default=ROOT / "docs" / "results" / "onnx_export.json")
    parser.add_argument("--markdown", type=Path, help="also write the docs/benchmarks.md section here")
    parser.add_argument("--render", type=Path, metavar="JSON", help="only print the markdown section of a JSON")
    args = parser.parse_args(argv)
    if args.render:
        print(render_markdown(json.loads(args.render.read_text())))
        return 0
    if args.smoke and args.out_json == parser.get_default("out_json"):
        parser.error("--smoke writes meaningless numbers: give --out-json elsewhere")
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    torch.set_num_threads(args.threads)
    import onnxruntime

    data = {"setup": {"date": time.strftime("%Y-%m-%d"), "torch": torch.__version__,
                      "onnxruntime": onnxruntime.__version__, "threads": args.threads, "rounds": args.rounds,
                      "calib_size": args.calib_size, "limit": args.limit, "smoke": args.smoke,
                      "candidates": list(ONNX_NATIVE_BITS)},
            "models": []}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            data["models"].append(run_model(name, args, Path(tmp)))
    args.out_json.parent.mkdir(parents=True, exist_ok=True)
    args.out_json.write_text(json.dumps(data, indent=1))
    section = render_markdown(data)
    if args.markdown:
        args.markdown.write_text(section + "\n")
    print(section)
    missed = [f"{e['model']}: {k}" for e in data["models"] for k, ok in e["targets"].items() if not ok]
    if missed:
        print(f"targets missed: {', '.join(missed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
