"""fxquant beside the tools people would pick instead, on a EuroSAT-trained ResNet, in one run.

Real run (quiet machine, repository root; needs ../shared/data, the checkpoint
from ``examples/eurosat/train.py --model <name>`` and, for the torchao rows,
``pip install -e ".[bench]"``)::

    OMP_NUM_THREADS=2 python benchmarks/peers.py --model resnet18 --threads 2 --update-doc docs/benchmarks.md
    OMP_NUM_THREADS=2 python benchmarks/peers.py --model resnet50 --threads 2 --update-doc docs/benchmarks.md

Development: ``--quick`` (500 test images, 256 calibration images, 3 latency
rounds; refuses ``--update-doc``) and ``--rows float32,fxquant-4,...``.

Rows: float32; torch.ao dynamic int8 and FX graph mode static int8; torchao
weight-only int8 / int4 / intx (each tried on convs + linear first); fxquant
fixed 8 and 4 bits and the default search, each packed-only (the default) and
with the dequantized-weight cache. Columns: held-out test accuracy, layers
actually quantized, file size as saved by the tool's recommended way, CPU
latency at batch 1 and 64 as a ratio to float32 (same process, interleaved,
median over rounds), and time to compress. Tools are described in
``benchmarks/peer_tools.py``.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import os
import platform
import re
import shlex
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import fxquant  # noqa: E402
from benchmarks.latency import interleaved_latency  # noqa: E402
from benchmarks.peer_tools import TOOLS, Unavailable, float_layers  # noqa: E402
from examples.eurosat.common import load_trained  # noqa: E402
from fxquant.data.eurosat import calibration_indices, eurosat_available, eurosat_splits  # noqa: E402

MIB = 1024 * 1024


def machine() -> dict:
    model_name = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model_name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        import torchao
        torchao_version = torchao.__version__
    except Exception:  # noqa: BLE001 - reported as absent
        torchao_version = "not installed"
    return {"cpu": model_name, "cores": os.cpu_count(), "torch": torch.__version__,
            "torchao": torchao_version, "fxquant": fxquant.__version__, "python": platform.python_version(),
            "date": datetime.date.today().isoformat()}


@torch.inference_mode()
def accuracy(model: torch.nn.Module, loader) -> float:
    correct = total = 0
    for x, y in loader:
        correct += int((model(x).argmax(dim=1) == y).sum())
        total += y.numel()
    return 100.0 * correct / total


def run_rows(args, model, splits, test_loader, out_dir: Path) -> list[dict]:
    example = torch.randn(2, 3, 64, 64)
    n_layers = len(float_layers(model))
    # fxquant's data-aware rounding takes its statistics from training images outside the
    # calibration subset, as examples/eurosat/table1.py does (the search must not score them).
    stats = splits.stats_loader(min(1024, len(splits.calib_idx)))
    wanted = [t for t in TOOLS if args.rows is None or t.key in args.rows]
    results: dict[str, dict] = {}
    for tool in wanted:
        row = {"key": tool.key, "label": tool.label, "storage": tool.storage, "status": "ok", "note": ""}
        results[tool.key] = row
        base = results.get(tool.cached_of) if tool.cached_of else None
        if base is not None:
            # The base row's model with the cache on: outputs are bit-identical, so accuracy,
            # file and compression time are the base row's; only latency is measured again.
            if base["status"] != "ok":
                row.update(status=base["status"], note=f"as {tool.cached_of}")
            else:
                row.update({k: base[k] for k in ("accuracy", "seconds", "file_bytes", "saved_as", "quantized")})
                row.update(model=fxquant.set_weight_cache(copy.deepcopy(base["model"]), True),
                           note=f"the {base['label']} model with the weight cache on")
            continue
        print(f"[{tool.key}] compressing ...", flush=True)
        try:
            built = tool.build(model, splits.calib_loader(), example, stats=stats)
            if tool.cached_of:
                fxquant.set_weight_cache(built.model, True)
            row.update(seconds=built.seconds, note=built.note, config=built.config,
                       quantized=f"{len(tool.quantized(built.model))}/{n_layers}")
            path = tool.save(built.model, out_dir / f"{args.model}_{tool.key}")
            row.update(file_bytes=path.stat().st_size, saved_as=path.suffix,
                       accuracy=accuracy(built.model, test_loader), model=built.model)
        except Unavailable as e:
            row.update(status="unavailable", note=str(e))
            print(f"[{tool.key}] unavailable: {e}", flush=True)
            continue
        except Exception as e:  # noqa: BLE001 - a peer failing is a result, not a crash
            row.update(status="failed", note=f"{type(e).__name__}: {e}")
            print(f"[{tool.key}] failed: {row['note']}", flush=True)
            continue
        print(f"[{tool.key}] {row['accuracy']:.2f}% | {row['quantized']} layers | "
              f"{row['file_bytes'] / MIB:.2f} MiB | {built.seconds:.1f} s | {built.note}", flush=True)
    models = {k: r["model"] for k, r in results.items() if r["status"] == "ok"}
    if "float32" in models:
        for batch in (1, 64):
            print(f"latency, batch {batch}: {len(models)} models, {args.rounds} interleaved rounds ...", flush=True)
            lat = interleaved_latency(models, "float32", batch, rounds=args.rounds, min_seconds=args.min_seconds)
            for key, value in lat.items():
                results[key][f"ms_b{batch}"], results[key][f"ratio_b{batch}"] = value.ms, value.ratio
    for row in results.values():
        row.pop("model", None)
    return list(results.values())


SAVED_AS = {".pt": "torch.save(state_dict)", ".fxq": "fxquant.save"}


def table(rows: list[dict], info: dict, args, command: str, n_test: int) -> str:
    float_row = next((r for r in rows if r["key"] == "float32" and r["status"] == "ok"), None)
    lines = [
        f"**{args.model}**, EuroSAT held-out test split ({n_test:,} images, evaluated in batches of "
        f"{args.eval_batch}), "
        f"{args.calib_size:,} calibration images from the training split. "
        f"{info['cpu']}, {info['cores']} cores, {args.threads} threads; torch {info['torch']}, "
        f"torchao {info['torchao']}, fxquant {info['fxquant']}, Python {info['python']}, {info['date']}.",
        "",
        f"`{command}`",
        "",
        f"File on disk: size and % of the float32 file. Latency: forward time over float32's, same process, "
        f"median of per-round ratios over {args.rounds} interleaved rounds (float32's own time in its row); "
        "64x64 RGB inputs.",
        "",
        "| row | test acc. | layers quantized | file on disk | batch 1 (× float) | batch 64 (× float) "
        "| time to compress | weights at inference |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    notes = []
    for r in rows:
        if r["status"] != "ok":
            notes.append(f"{r['label']}: {r['status']}: {r['note']}")
            lines.append(f"| {r['label']} | {r['status']} [{len(notes)}] | – | – | – | – | – | – |")
            continue
        size = f"{r['file_bytes'] / MIB:.2f} MiB"
        if float_row and r is not float_row:
            size += f" ({100 * r['file_bytes'] / float_row['file_bytes']:.0f}%)"
        size += f", {SAVED_AS.get(r['saved_as'], r['saved_as'])}"
        lat = []
        for b in (1, 64):
            if f"ratio_b{b}" not in r:
                lat.append("–")
            elif r is float_row:
                lat.append(f"1.00 ({r[f'ms_b{b}']:.1f} ms)")
            else:
                lat.append(f"{r[f'ratio_b{b}']:.2f}")
        label = r["label"]
        if r["note"]:
            notes.append(f"{r['label']}: {r['note']}")
            label += f" [{len(notes)}]"
        seconds = "–" if r is float_row else f"{r['seconds']:.1f} s"
        lines.append(f"| {label} | {r['accuracy']:.2f}% | {r['quantized'] if r is not float_row else '–'} | "
                     f"{size} | {lat[0]} | {lat[1]} | {seconds} | {r['storage']} |")
    lines += [""] + [f"[{i}] {n}" for i, n in enumerate(notes, 1)]
    lines.append("")
    for r in rows:
        if r.get("config") and not r["key"].endswith("-cached"):
            lines.append(f"{r['label']} ran with `{r['config']}`.")
    return "\n".join(lines) + "\n"


def update_doc(path: Path, model: str, text: str) -> None:
    doc = path.read_text()
    begin, end = f"<!-- peers:{model}:begin -->", f"<!-- peers:{model}:end -->"
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.S)
    if not pattern.search(doc):
        raise SystemExit(f"--update-doc: {path} has no '{begin}' ... '{end}' block")
    path.write_text(pattern.sub(lambda _: f"{begin}\n{text}{end}", doc))
    print(f"updated {path}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet18", choices=["resnet18", "resnet50"])
    parser.add_argument("--checkpoint", type=Path, help="default: the cache path examples/eurosat/train.py writes")
    parser.add_argument("--root", help="EuroSAT root (default ../shared/data)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads for everything (default 1)")
    parser.add_argument("--calib-size", type=int, help="calibration images (default 2000; --quick 256)")
    parser.add_argument("--test-size", type=int, help="stratified subset of the test split (default all; --quick 500)")
    parser.add_argument("--eval-batch", type=int, default=256, help="batch size of the accuracy evaluation")
    parser.add_argument("--rounds", type=int, help="interleaved latency rounds (default 9; --quick 3)")
    parser.add_argument("--min-seconds", type=float, help="time per model per round (default 0.3; --quick 0.1)")
    parser.add_argument("--rows", type=lambda s: s.split(","), help="comma-separated subset of: "
                        + ", ".join(t.key for t in TOOLS))
    parser.add_argument("--quick", action="store_true", help="small, fast settings for development")
    parser.add_argument("--out-dir", type=Path, help="keep the saved models here (default: a temporary folder)")
    parser.add_argument("--json", type=Path, help="also write the rows and machine as JSON")
    parser.add_argument("--update-doc", type=Path, help="replace this model's block in e.g. docs/benchmarks.md")
    args = parser.parse_args(argv)
    defaults = {"calib_size": (2000, 256), "rounds": (9, 3), "min_seconds": (0.3, 0.1)}
    for name, (full, quick) in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, quick if args.quick else full)
    if args.test_size is None and args.quick:
        args.test_size = 500
    if args.quick and args.update_doc:
        parser.error("--quick figures are for development: run without --quick to --update-doc")
    unknown = set(args.rows or ()) - {t.key for t in TOOLS}
    if unknown:
        parser.error(f"--rows: unknown {', '.join(sorted(unknown))}; choose from {', '.join(t.key for t in TOOLS)}")
    if not eurosat_available(args.root):
        parser.error("EuroSAT not found: pass --root or set FXQUANT_EUROSAT_ROOT")
    torch.set_num_threads(args.threads)
    command = " ".join(["OMP_NUM_THREADS=" + os.environ.get("OMP_NUM_THREADS", "(unset)"),
                        "python benchmarks/peers.py", *map(shlex.quote, sys.argv[1:] if argv is None else argv)])

    model, meta = load_trained(args.model, path=args.checkpoint)
    splits = eurosat_splits(args.root, seed=meta.get("split_seed", 0), calib_size=args.calib_size)
    test_idx = splits.test_idx
    if args.test_size is not None and args.test_size < test_idx.numel():
        test_idx = calibration_indices(splits.arrays.labels, test_idx, args.test_size, seed=1)
    test_loader = splits.loader(test_idx, batch_size=args.eval_batch)
    info = machine()
    print(f"{args.model}: {test_idx.numel()} test images, {args.calib_size} calibration images, "
          f"{args.threads} threads; {info}")
    print(f"fxquant defaults: {fxquant.QuantConfig()!r}\n                  {fxquant.SearchConfig()!r}\n"
          "(each fxquant row prints the settings it ran with)", flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        out_dir = args.out_dir or Path(tmp)
        out_dir.mkdir(parents=True, exist_ok=True)
        rows = run_rows(args, model, splits, test_loader, out_dir)
    text = table(rows, info, args, command, int(test_idx.numel()))
    print("\n" + text)
    if args.json:
        args.json.write_text(json.dumps({"machine": info, "command": command, "rows": rows}, indent=2) + "\n")
    if args.update_doc:
        update_doc(args.update_doc, args.model, text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
