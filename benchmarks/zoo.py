"""fxquant.quantize over every torchvision classifier: coverage, storage, fidelity, time.

Run (about half an hour on 2 CPU cores; writes the markdown table):
    python benchmarks/zoo.py --out docs/zoo.md
    python benchmarks/zoo.py --models resnet18 vit_b_16     # a subset, table on stdout

Per model (``weights=None``, ``num_classes=10``, eval mode, batch 1; 224 px for
ViT/Swin/MaxViT, 96 px for Inception/GoogLeNet, 64 px otherwise), at 8 and 4 bits:

* coverage: packed weight params / the weight params of the model's own
  Conv/Linear/MultiheadAttention modules that the forward calls, counted from
  ``named_modules()`` and forward hooks, not by the layer finder (each tied weight once); ``float left`` counts layer weights that
  still have a float copy in ``state_dict()`` (must be 0);
* bytes ratio: integer bytes in ``state_dict()`` / sum(params * b / 8);
* fidelity: relative L2 error of the output vs the float model, and finiteness;
* the float model's ``state_dict`` is compared before/after (must be unchanged).

Weights that are all zero after torchvision's init (ViT's head) are re-initialised
N(0, 0.02) with a fixed seed first, else the float output is identically zero and
a relative error is undefined. ``sensitivity`` is the relative output change
under 0.1% Gaussian weight noise: context for the 8-bit error (see
``weight_sensitivity``); the model is restored exactly afterwards. ``unused`` counts conv/linear weights the traced
eval-mode graph never reaches (Inception/GoogLeNet auxiliary heads): they are not
part of the traced model at all.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch
import torchvision
from torch import nn

import fxquant
from fxquant import passes

BITS = (8, 4)


def input_size(name: str) -> int:
    if name.startswith(("vit", "swin", "maxvit")):
        return 224
    if name in ("inception_v3", "googlenet"):
        return 96
    return 64


def build(name: str) -> nn.Module:
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = torchvision.models.get_model(name, weights=None, num_classes=10)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for module in model.modules():
            w = getattr(module, "weight", None)
            if isinstance(w, nn.Parameter) and w.dim() >= 2 and not w.any():
                w.copy_(torch.randn(w.shape, generator=gen) * 0.02)
    return model.eval()


@torch.no_grad()
def weight_sensitivity(model: nn.Module, x: torch.Tensor, ref: torch.Tensor, noise: float = 1e-3) -> float:
    """Relative output change when every layer weight gets ``noise`` relative Gaussian noise.

    Context for the 8-bit error: 8-bit min/max rounding is roughly 0.5% relative
    noise per weight, so a model whose output moves a lot under 0.1% noise
    (a chaotic random network) cannot show a small 8-bit error, and one whose
    output does not move at all (GoogLeNet's random init) shows a vacuous 0.
    """
    gen = torch.Generator().manual_seed(4)
    saved = {}
    for name, p in model.named_parameters():
        if p.dim() >= 2:
            saved[name] = p.detach().clone()
            p.mul_(1 + noise * torch.randn(p.shape, generator=gen))
    out = model(x)
    for name, p in model.named_parameters():
        if name in saved:
            p.copy_(saved[name])
    return float((out - ref).norm() / ref.norm())


def own_layer_weights(model: nn.Module, x: torch.Tensor | None = None) -> int:
    """Weights of ``model``'s own Conv1d/2d/3d, Linear and MultiheadAttention modules, from
    ``named_modules()`` (not from ``find_layers``), so coverage does not measure the finder
    against itself; a tied weight counts once. With ``x``, only the modules a forward on
    ``x`` calls (forward hooks; e.g. not Inception's auxiliary head in eval mode)."""
    kinds = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear, nn.MultiheadAttention)
    called = set()
    if x is not None:
        hooks = [m.register_forward_hook(lambda m, i, o: called.add(id(m)))
                 for m in model.modules() if isinstance(m, kinds)]
        try:
            with torch.no_grad():
                model(x)
        finally:
            for hook in hooks:
                hook.remove()
        # Attention reads its out_proj's weight without calling the Linear.
        called |= {id(m.out_proj) for m in model.modules() if isinstance(m, nn.MultiheadAttention) and id(m) in called}
    sizes = {}
    for module in model.modules():
        if x is not None and id(module) not in called:
            continue
        if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)):
            sizes[id(module.weight)] = module.weight.numel()
        elif isinstance(module, nn.MultiheadAttention):  # its out_proj is an nn.Linear, counted above
            sizes.update({id(p): p.numel() for k, p in module._parameters.items()
                          if k.endswith("proj_weight") and p is not None})
    return sum(sizes.values())


def evaluate(name: str, size: int | None = None) -> dict:
    """One table row for torchvision model ``name`` at ``size`` px (default: ``input_size``)."""
    t0 = time.perf_counter()
    model = build(name)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    size = size or input_size(name)
    x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ref = model(x)
    sensitivity = weight_sensitivity(model, x, ref)
    gm = passes.trace(model)
    layers = passes.find_layers(gm)
    total = sum(layer.params for layer in layers)
    row = {"model": name, "input": size, "layers": len(layers), "params": total,
           "own_params": own_layer_weights(model, x), "unused": own_layer_weights(model) - own_layer_weights(gm),
           "sensitivity": sensitivity}
    del gm
    for bits in BITS:
        q = fxquant.quantize(model, bits)
        sd = q.state_dict()
        storage = fxquant.weight_storage(q)
        layer_paths = {layer.param_path for layer in layers}
        float_left = sum(v.numel() for k, v in sd.items() if k in layer_paths and v.is_floating_point())
        with torch.no_grad():
            out = q(x)
        row[f"coverage{bits}"] = storage.packed_params / row["own_params"]
        row[f"float_left{bits}"] = float_left
        row[f"bytes_ratio{bits}"] = fxquant.state_dict_bytes(sd)["integer"] / (total * bits / 8)
        row[f"err{bits}"] = float((out - ref).norm() / ref.norm())
        row[f"finite{bits}"] = bool(torch.isfinite(out).all())
        del q, sd
    row["unchanged"] = all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    row["seconds"] = time.perf_counter() - t0
    return row


def passes_bars(row: dict) -> bool:
    return (all(row[f"coverage{b}"] >= 0.99 and row[f"float_left{b}"] == 0 for b in BITS)
            and all(abs(row[f"bytes_ratio{b}"] - 1) <= 0.10 for b in BITS)
            and row["err8"] <= 0.1 and all(row[f"finite{b}"] for b in BITS) and row["unchanged"])


def markdown(rows: list[dict], failures: dict[str, str], seconds: float) -> str:
    errs = sorted(r["err8"] for r in rows)
    q = statistics.quantiles(errs, n=4) if len(errs) >= 2 else errs * 3
    ok = sum(passes_bars(r) for r in rows)
    lines = [
        "# fxquant over the torchvision classifier zoo",
        "",
        f"Command: `python benchmarks/zoo.py --out docs/zoo.md` "
        f"(torch {torch.__version__}, torchvision {torchvision.__version__}, "
        f"{torch.get_num_threads()} threads, {platform.machine()}; total {seconds / 60:.1f} min).",
        "",
        f"**{ok} of {len(rows) + len(failures)} models meet every bar** (coverage >= 99% with no float "
        "copy left, integer bytes within 10% of params*b/8, 8-bit relative L2 error <= 0.1, finite "
        "outputs, float model unchanged).",
        "",
        f"8-bit relative output error over {len(errs)} models: min {errs[0]:.4f}, "
        f"quartiles {q[0]:.4f} / {q[1]:.4f} / {q[2]:.4f}, max {errs[-1]:.4f}." if errs else "",
        "",
        "`unused`: conv/linear weights the traced eval-mode graph never reaches (auxiliary heads); "
        "they are not in the traced model. `sensitivity`: relative output change under 0.1% Gaussian "
        "weight noise, for context (8-bit rounding is about 0.5% noise per weight). `float left`: layer weights still stored as float "
        "(8-bit / 4-bit).",
        "",
        "| model | px | layers | params | unused | coverage 8b | coverage 4b | float left | "
        "bytes ratio 8b | bytes ratio 4b | rel. err 8b | rel. err 4b | sensitivity | finite | unchanged | s | ok |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|---:|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['input']} | {r['layers']} | {r['params']:,} | {r['unused']:,} | "
            f"{r['coverage8']:.4f} | {r['coverage4']:.4f} | {r['float_left8']}/{r['float_left4']} | "
            f"{r['bytes_ratio8']:.4f} | {r['bytes_ratio4']:.4f} | {r['err8']:.4f} | {r['err4']:.3f} | {r['sensitivity']:.4f} | "
            f"{'yes' if r['finite8'] and r['finite4'] else 'NO'} | {'yes' if r['unchanged'] else 'NO'} | "
            f"{r['seconds']:.1f} | {'yes' if passes_bars(r) else 'NO'} |")
    for name, err in failures.items():
        lines.append(f"| {name} | FAILED: {err} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="*", help="default: all of torchvision.models.list_models")
    parser.add_argument("--out", type=Path, help="write the markdown table here")
    parser.add_argument("--json", type=Path, help="also write the raw rows as JSON")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    names = args.models or torchvision.models.list_models(module=torchvision.models)
    rows, failures = [], {}
    t0 = time.perf_counter()
    for i, name in enumerate(names, 1):
        try:
            row = evaluate(name)
        except Exception as e:  # noqa: BLE001 - a failing model is a row in the table
            failures[name] = f"{type(e).__name__}: {e}"[:200]
            print(f"[{i}/{len(names)}] {name}: FAILED {failures[name]}", file=sys.stderr, flush=True)
            continue
        rows.append(row)
        print(f"[{i}/{len(names)}] {name}: err8={row['err8']:.4f} cov={row['coverage4']:.4f} "
              f"ok={passes_bars(row)} {row['seconds']:.1f}s", file=sys.stderr, flush=True)
    text = markdown(rows, failures, time.perf_counter() - t0)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    else:
        print(text)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0 if not failures and all(passes_bars(r) for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
