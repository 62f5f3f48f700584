#!/usr/bin/env python
"""The paper's Table 1 on EuroSAT: every row measured on the held-out test split, saved as computed.

One command per model (from the repository root; the checkpoint comes from
``examples/eurosat/train.py``)::

    OMP_NUM_THREADS=2 python examples/eurosat/table1.py --model resnet18 --threads 2
    OMP_NUM_THREADS=1 python examples/eurosat/table1.py --model resnet18 --quick   # pipeline check, temp dir
    python examples/eurosat/table1.py --report      # only regenerate docs/results/eurosat.md + figure

Rows per quantizer (``--quantizers paper,default``): fixed 8..1 bits on every
layer, the fixed-margin search and the adaptive-margin search (T_init = 0.5),
plus the float model; (``--parts robust``, default quantizer only) fxquant's
sensitivity search in accuracy mode (T_init = 0.5) and at ``target_bits`` 1.0,
1.5 and 2.0; and (``--parts ablation``) the issue-5 rounding ablation:
per-channel quantizer, fixed 8..2 bits x {nearest, bias correction, GPTQ, GPTQ +
bias correction}. ``--only PATTERN`` runs the matching rows alone, so a large
model's table can be filled in pieces (e.g. ``--only float --only 'default/fixed*'``). The search and the data-aware rounding see only the
calibration subset carved from the training split; the test split is used only
to score each finished model.

Each row goes to ``<out>/eurosat_<model>.json`` as soon as it is computed, and a
rerun skips the rows already there (with the same quantizer settings), so an
interrupted run resumes where it stopped. One file per model, so models can run
in parallel. The report (``table1_report.py``) is regenerated at the end.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import fnmatch
import hashlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

_REPO_ROOT = Path(__file__).resolve().parents[2]
if str(_REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(_REPO_ROOT))

import torch  # noqa: E402

import fxquant  # noqa: E402
from examples.eurosat import table1_report  # noqa: E402
from examples.eurosat.common import checkpoint_path, load_trained  # noqa: E402
from fxquant.data.eurosat import calibration_indices, eurosat_available, eurosat_splits  # noqa: E402

SCHEMA = table1_report.SCHEMA
RESULTS_DIR = _REPO_ROOT / "docs" / "results"
T_INIT = 0.5
TABLE_BITS = (8, 7, 6, 5, 4, 3, 2, 1)
ABLATION_BITS = (8, 7, 6, 5, 4, 3, 2)
STATS_SIZE = 1024  # images for GPTQ / bias-correction statistics (QuantConfig.calib_samples)
QUICK = {"n_test": 300, "n_calib": 200, "bits": (8, 4, 2)}
# The issue-5 ablation: (rounding, bias_correction) on the per-channel grid.
PARTS = ("table", "robust", "ablation")
ROBUST_TARGETS = (1.0, 1.5, 2.0)  # target_bits of the budget-mode rows
SEARCH_KINDS = ("search", "accuracy", "budget")  # rows that run a bit-width search
ABLATION = {"nearest": ("nearest", False), "bc": ("nearest", True),
            "gptq": ("gptq", False), "gptq_bc": ("gptq", True)}


# ---- quantizer settings ----------------------------------------------------------------

def quantizer(name: str) -> fxquant.QuantConfig:
    """The table's two quantizers: the paper's (per-tensor min/max, nearest) and fxquant's default."""
    if name == "paper":
        return fxquant.QuantConfig(granularity="per_tensor", rounding="nearest", bias_correction=False,
                                   binary_scale="max")
    if name == "default":
        return fxquant.QuantConfig()
    raise ValueError(f"unknown quantizer {name!r}; choose paper or default")


def ablation_config(method: str) -> fxquant.QuantConfig:
    rounding, bias_correction = ABLATION[method]
    return fxquant.QuantConfig(granularity="per_channel", rounding=rounding, bias_correction=bias_correction)


def same_quantizer(a: dict, b: dict) -> bool:
    """Settings that give the same model here: calibration data is always passed, so auto = GPTQ."""
    def norm(q: dict) -> dict:
        q = {"binary_scale": "max", **q}  # rows stored before the field existed used max|w| at 1 bit
        return {k: ("gptq" if k == "rounding" and v == "auto" else v) for k, v in q.items() if k != "bits"}
    return norm(a) == norm(b)


# ---- the rows ------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class RowSpec:
    key: str  # e.g. "default/fixed4", "paper/search_adaptive", "default/target1.5", "ablation/gptq/fixed3"
    group: str  # "float", "paper", "default", "ablation"
    kind: str  # "float", "fixed", "search" (the paper's), "accuracy" or "budget" (fxquant's sensitivity search)
    bits: int | None = None
    margin: str | None = None  # search rows: "fixed" or "adaptive"
    config: str | None = None  # quantizer name, or "ablation:<method>"
    target_bits: float | None = None  # budget rows

    def quant(self) -> fxquant.QuantConfig:
        if self.config.startswith("ablation:"):
            return ablation_config(self.config.split(":", 1)[1])
        return quantizer(self.config)


def plan(quantizers: list[str], parts: list[str], bits: tuple[int, ...]) -> list[RowSpec]:
    rows = [RowSpec("float", "float", "float")]
    if "table" in parts:
        for q in quantizers:
            rows += [RowSpec(f"{q}/fixed{b}", q, "fixed", bits=b, config=q) for b in bits]
            rows += [RowSpec(f"{q}/search_{m}", q, "search", margin=m, config=q) for m in ("fixed", "adaptive")]
    if "robust" in parts and "default" in quantizers:
        # The paper quantizer's 1-2 bit rows are noise (Table 1), so only the default one is searched here.
        rows.append(RowSpec("default/accuracy", "default", "accuracy", config="default"))
        rows += [RowSpec(f"default/target{b:.1f}", "default", "budget", config="default", target_bits=b)
                 for b in ROBUST_TARGETS]
    if "ablation" in parts:
        for b in (b for b in bits if b in ABLATION_BITS):
            rows += [RowSpec(f"ablation/{m}/fixed{b}", "ablation", "fixed", bits=b, config=f"ablation:{m}")
                     for m in ABLATION]
    return rows


def measure(gm, test) -> dict:
    """Test accuracy and storage of a quantized GraphModule."""
    rep = fxquant.report(gm)
    sd_bytes = fxquant.state_dict_bytes(gm.state_dict())
    fxquant.set_weight_cache(gm, True)  # float-speed forwards: the test pass is the slow part
    t0 = time.perf_counter()
    acc = test(gm)
    return {"test_acc": acc, "avg_bits": rep.average_bits, "packed_bytes": rep.packed_bytes,
            "grid_bytes": rep.grid_bytes, "weight_float32_bytes": rep.float32_bytes,
            "state_dict_bytes": sd_bytes, "eval_seconds": time.perf_counter() - t0}


def compute_row(spec: RowSpec, model, calib, stats, test, verbose: bool) -> dict:
    if spec.kind == "float":
        t0 = time.perf_counter()
        acc = test(model)
        return {"test_acc": acc, "avg_bits": 32.0, "state_dict_bytes": fxquant.state_dict_bytes(model.state_dict()),
                "params": sum(p.numel() for p in model.parameters()), "eval_seconds": time.perf_counter() - t0}
    cfg = spec.quant()
    t0 = time.perf_counter()
    if spec.kind == "fixed":
        gm = fxquant.quantize(model, spec.bits, config=cfg, calib_loader=stats)
    elif spec.kind == "search":
        gm = fxquant.compress(model, calib, stats_loader=stats, method="paper", margin=spec.margin, t_init=T_INIT,
                              quant=cfg, verbose=verbose)
    elif spec.kind == "accuracy":
        gm = fxquant.compress(model, calib, stats_loader=stats, method="sensitivity", t_init=T_INIT, quant=cfg,
                              verbose=verbose)
    else:
        gm = fxquant.compress(model, calib, stats_loader=stats, method="sensitivity", target_bits=spec.target_bits,
                              quant=cfg, verbose=verbose)
    wall = time.perf_counter() - t0
    row = {"quant": dataclasses.asdict(cfg), "wall_seconds": wall, **measure(gm, test)}
    row["quant_resolved"] = dataclasses.asdict(cfg.data_aware(True))  # "auto": data are always given here
    if spec.kind in SEARCH_KINDS:
        rep = fxquant.report(gm)
        if rep.settings and "quant" in rep.settings:
            row["quant_resolved"] = rep.settings["quant"]
        if spec.kind != "search":
            row.update(method="sensitivity", target_bits=spec.target_bits)
        if spec.kind != "budget":
            row["t_init"] = T_INIT
        row.update(search_seconds=rep.seconds, oracle_calls=rep.oracle_calls,
                   layer_forwards=rep.layer_forwards, calib_float=rep.float_value,
                   calib_baseline=rep.baseline_value, calib_final=rep.final_value,
                   layer_bits={lay.name: lay.bits for lay in rep.layers},
                   layer_params={lay.name: lay.params for lay in rep.layers})
    return row


def reusable(spec: RowSpec, quant: dict, rows: dict) -> str | None:
    """Key of an existing fixed row with the same width and an equivalent quantizer, if any."""
    if spec.kind != "fixed":
        return None
    for key, row in rows.items():
        if row.get("kind") == "fixed" and row.get("bits") == spec.bits and "reused_from" not in row \
                and same_quantizer(row.get("quant", {}), quant):
            return key
    return None


# ---- provenance ----------------------------------------------------------------------

def git_commit() -> str | None:
    try:
        sha = subprocess.run(["git", "-C", str(_REPO_ROOT), "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(_REPO_ROOT), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return sha + ("-dirty" if dirty else "")


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


TRAINING_KEYS = ("model", "num_classes", "epochs", "epoch", "hparams", "test_acc", "test_loss", "n_test", "n_train",
                 "train_time_s", "threads", "split_seed", "test_fraction", "calib_size", "seed", "normalization",
                 "torch_version", "torchvision_version")


def training_facts(ckpt: Path, meta: dict) -> dict:
    """What train.py recorded (its JSON summary, else the checkpoint), so the report needs no cache."""
    summary_file = ckpt.with_suffix(".json")
    summary = json.loads(summary_file.read_text()) if summary_file.is_file() else meta
    facts = {k: summary[k] for k in TRAINING_KEYS if k in summary}
    if summary.get("history"):
        facts["final_epoch"] = summary["history"][-1]
    facts["checkpoint_file"] = ckpt.name
    return json.loads(json.dumps(facts, default=str))  # JSON-shaped whatever the checkpoint held


# ---- storage -------------------------------------------------------------------------

def write_json(path: Path, data: dict) -> None:
    """Atomic replace: a run cut mid-write must not lose the rows already stored."""
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    os.replace(tmp, path)


def open_results(path: Path, model: str, setup: dict, training: dict, fresh: bool) -> dict:
    if path.is_file() and not fresh:
        data = json.loads(path.read_text())
        if data.get("schema") != SCHEMA or data.get("model") != model:
            raise SystemExit(f"{path} is not a {SCHEMA} file for {model}; pass --fresh to replace it")
        if data.get("setup") != setup:
            diff = sorted(k for k in set(setup) | set(data.get("setup", {}))
                          if setup.get(k) != data.get("setup", {}).get(k))
            raise SystemExit(f"{path} was made with a different setup (differs in {diff}); "
                             f"pass --fresh to start over or --out elsewhere")
        data["training"] = training
        return data
    return {"schema": SCHEMA, "model": model, "setup": setup, "training": training,
            "rows": {}, "pending": {}, "notes": []}


# ---- main ----------------------------------------------------------------------------

def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", choices=["resnet18", "resnet50", "vgg11_bn", "vgg19_bn"])
    p.add_argument("--quantizers", default="paper,default", help="comma list of: paper, default")
    p.add_argument("--parts", default="table,robust,ablation", help="comma list of: table, robust, ablation")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (recorded per row)")
    p.add_argument("--quick", action="store_true",
                   help=f"pipeline check: {QUICK['n_test']} test / {QUICK['n_calib']} calibration images, "
                        f"bits {QUICK['bits']}, into a temporary directory")
    p.add_argument("--out", type=Path, default=None, help=f"results directory (default {RESULTS_DIR})")
    p.add_argument("--root", default=None, help="EuroSAT root (default ../shared/data)")
    p.add_argument("--checkpoint", type=Path, default=None, help="default: the path train.py writes")
    p.add_argument("--calib-size", type=int, default=2000)
    p.add_argument("--bits", default=None, help="comma list of fixed widths to run (default 8..1)")
    p.add_argument("--redo", action="append", default=[], metavar="PATTERN",
                   help="recompute rows whose key matches this glob (e.g. 'default/*'); repeatable")
    p.add_argument("--only", action="append", default=[], metavar="PATTERN",
                   help="run only rows whose key matches this glob (e.g. 'default/fixed*'); repeatable")
    p.add_argument("--fresh", action="store_true", help="discard the model's stored rows")
    p.add_argument("--report", action="store_true", help="only regenerate the markdown and figure")
    p.add_argument("--no-report", action="store_true", help="do not regenerate the report at the end")
    p.add_argument("--verbose", action="store_true", help="per-layer search progress")
    args = p.parse_args(argv)
    if not args.report and args.model is None:
        p.error("--model is required (or --report)")
    if args.out is None:
        args.out = Path(tempfile.mkdtemp(prefix="fxquant-table1-quick-")) if args.quick else RESULTS_DIR
    elif args.quick and args.out.resolve() == RESULTS_DIR.resolve():
        p.error("--quick results never go to docs/results")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.report:
        print(table1_report.write_report(args.out))
        return 0
    if args.threads:
        torch.set_num_threads(args.threads)
    if not eurosat_available(args.root):
        raise SystemExit("EuroSAT not found: pass --root or set FXQUANT_EUROSAT_ROOT")
    quantizers = [q.strip() for q in args.quantizers.split(",") if q.strip()]
    for q in quantizers:
        quantizer(q)  # unknown names fail now, not hours in
    parts = [x.strip() for x in args.parts.split(",") if x.strip()]
    if set(parts) - set(PARTS):
        raise SystemExit(f"--parts takes a comma list of {', '.join(PARTS)}, got {args.parts!r}")

    ckpt = args.checkpoint or checkpoint_path(args.model)
    model, meta = load_trained(args.model, path=ckpt)
    split_seed = meta.get("split_seed", 0)
    splits = eurosat_splits(args.root, seed=split_seed, calib_size=args.calib_size)
    test_idx, calib_idx, bits = splits.test_idx, splits.calib_idx, TABLE_BITS
    if args.bits:
        bits = tuple(int(b) for b in args.bits.split(",") if b.strip())
    if args.quick:
        gen = torch.Generator().manual_seed(split_seed)
        test_idx = test_idx[torch.randperm(test_idx.numel(), generator=gen)[:QUICK["n_test"]]].sort().values
        calib_idx = calibration_indices(splits.arrays.labels, splits.train_idx, QUICK["n_calib"], split_seed)
        bits = QUICK["bits"]
    # Data-aware rounding's statistics: other training images, so the search's oracle never
    # scores the images GPTQ fitted (measured: sharing them let the search overfit).
    rest = splits.train_idx[~torch.isin(splits.train_idx, calib_idx)]
    stats_idx = calibration_indices(splits.arrays.labels, rest, QUICK["n_calib"] if args.quick else STATS_SIZE,
                                    split_seed + 1)
    assert not set(calib_idx.tolist()) & set(test_idx.tolist()), "calibration images must come from training"
    assert not set(stats_idx.tolist()) & (set(test_idx.tolist()) | set(calib_idx.tolist()))
    calib = splits.loader(calib_idx)
    stats = splits.loader(stats_idx)
    print(f"{args.model}: {test_idx.numel()} test images, {calib_idx.numel()} calibration images "
          f"(training split), threads {torch.get_num_threads()}, results in {args.out}", flush=True)
    test = fxquant.AccuracyOracle(splits.loader(test_idx))  # decoded once, reused for every row

    setup = {"split_seed": split_seed, "test_fraction": 0.2, "n_test": int(test_idx.numel()),
             "n_calib": int(calib_idx.numel()), "calib_source": "training split", "t_init": T_INIT,
             "n_stats": int(stats_idx.numel()),
             "stats_source": "training split, disjoint from the calibration subset",
             "quick": bool(args.quick), "checkpoint_sha256": sha256(ckpt)}
    path = args.out / f"eurosat_{args.model}.json"
    data = open_results(path, args.model, setup, training_facts(ckpt, meta), args.fresh)
    provenance = {"threads": torch.get_num_threads(), "torch_version": str(torch.__version__),
                  "fxquant_version": fxquant.__version__, "git_commit": git_commit(), "cpu": cpu_name()}

    specs = plan(quantizers, parts, bits)
    if args.only:
        specs = [s for s in specs if any(fnmatch.fnmatchcase(s.key, pat) for pat in args.only)]
        if not specs:
            raise SystemExit(f"--only {args.only} matches no row of this plan (keys look like 'default/fixed4')")
    data["pending"] = {k: v for k, v in data.get("pending", {}).items() if k not in {s.key for s in specs}}
    for spec in specs:
        quant = None if spec.kind == "float" else dataclasses.asdict(spec.quant())
        old = data["rows"].get(spec.key)
        redo = any(fnmatch.fnmatchcase(spec.key, pat) for pat in args.redo)
        # Copies are refreshed every run, so they follow their source when it is redone.
        if old is not None and not redo and old.get("quant") == quant and "reused_from" not in old:
            continue
        source = None if redo else reusable(spec, quant, {k: v for k, v in data["rows"].items() if k != spec.key})
        if source is not None:
            row = {**data["rows"][source], "quant": quant, "reused_from": source}
        else:
            print(f"  {spec.key:<32} ...", end="", flush=True)
            row = compute_row(spec, model, calib, stats, test, args.verbose)
            row.update(provenance, finished=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"))
        row.update(key=spec.key, group=spec.group, kind=spec.kind, bits=spec.bits, margin=spec.margin)
        data["rows"][spec.key] = row
        write_json(path, data)
        took = "" if source else f" ({row.get('wall_seconds', 0) + row['eval_seconds']:.0f} s)"
        print(("" if source else " ") if source is None else f"  {spec.key:<32} ", end="")
        print(f"test {row['test_acc']:6.2f}%  {row['avg_bits']:5.2f} bits{took}"
              + (f"  = {source}" if source else ""), flush=True)
    write_json(path, data)
    print(f"wrote {path}")
    if not args.no_report:
        print(table1_report.write_report(args.out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
