#!/usr/bin/env python
"""Train a torchvision classifier from scratch on EuroSAT RGB (CPU-friendly protocol).

Example (from the repository root)::

    python examples/eurosat/train.py --model resnet18 --epochs 15 --threads 1

Protocol: seeded stratified 80/20 split (fxquant.data.eurosat.stratified_split, split seed
``--split-seed``), SGD (momentum 0.9, Nesterov) with weight decay 5e-4 (the paper used
1e-6; the value used is recorded in the checkpoint), OneCycle learning-rate schedule,
batch-level augmentation (random horizontal + vertical flips and random integer
translations of up to ``--max-shift`` pixels with reflection padding, one vectorised
``grid_sample`` per batch). The held-out test split is only evaluated for monitoring and
at the end; the final weights are kept (no model selection on test data).

The checkpoint goes to ``cache_dir()/checkpoints/eurosat_<model>_seed<seed>.pt`` (override
with ``--out``), with a JSON summary next to it. A resumable ``<out>.partial`` is written
after every epoch and picked up automatically if training is restarted.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

_REPO_ROOT = Path(__file__).resolve().parents[2]
if str(_REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(_REPO_ROOT))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
import torchvision  # noqa: E402

from examples.eurosat.common import NUM_CLASSES, build_model, checkpoint_path  # noqa: E402
from fxquant.data.eurosat import (  # noqa: E402
    EUROSAT_MEAN, EUROSAT_STD, ImageBatches, eurosat_splits)

PAPER_WEIGHT_DECAY = 1e-6


class FlipTranslate:
    """Vectorised batch augmentation: random H/V flips + integer translations (reflect pad)."""

    def __init__(self, max_shift: int = 4) -> None:
        self.max_shift = int(max_shift)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape
        sx = torch.randint(0, 2, (n,)).float() * 2 - 1  # -1 = horizontal flip
        sy = torch.randint(0, 2, (n,)).float() * 2 - 1  # -1 = vertical flip
        theta = torch.zeros(n, 2, 3)
        theta[:, 0, 0], theta[:, 1, 1] = sx, sy
        if self.max_shift > 0:
            shift = torch.randint(-self.max_shift, self.max_shift + 1, (n, 2)).float()
            theta[:, 0, 2] = shift[:, 0] * 2.0 / w  # whole-pixel shifts: no interpolation blur
            theta[:, 1, 2] = shift[:, 1] * 2.0 / h
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection",
                             align_corners=False)


def evaluate(model: torch.nn.Module, loader: ImageBatches, channels_last: bool) -> tuple[float, float]:
    model.eval()
    correct, total, loss_sum = 0, 0, 0.0
    with torch.inference_mode():
        for x, y in loader:
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            out = model(x)
            loss_sum += F.cross_entropy(out, y, reduction="sum").item()
            correct += (out.argmax(1) == y).sum().item()
            total += y.numel()
    return correct / max(total, 1), loss_sum / max(total, 1)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="torchvision.models name, e.g. resnet18, vgg11_bn")
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=0.05, help="peak (OneCycle max) learning rate")
    p.add_argument("--weight-decay", type=float, default=5e-4)
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--pct-start", type=float, default=0.25, help="OneCycle warm-up fraction")
    p.add_argument("--label-smoothing", type=float, default=0.0)
    p.add_argument("--max-shift", type=int, default=4, help="max random translation in pixels")
    p.add_argument("--seed", type=int, default=0, help="training seed (init, shuffling, augmentation)")
    p.add_argument("--split-seed", type=int, default=0, help="seed of the train/test/calib split")
    p.add_argument("--calib-size", type=int, default=2000, help="calibration subset size (recorded)")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    p.add_argument("--root", default=None, help="EuroSAT root (folder containing eurosat/2750)")
    p.add_argument("--out", default=None, help="checkpoint path (default: cache_dir()/checkpoints/...)")
    p.add_argument("--eval-every", type=int, default=5, help="monitor test accuracy every N epochs")
    p.add_argument("--limit", type=int, default=None,
                   help="smoke test: use only N training and N//4 test images")
    p.add_argument("--no-channels-last", action="store_true", help="disable channels_last memory format")
    p.add_argument("--force", action="store_true", help="retrain even if the checkpoint exists")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    channels_last = not args.no_channels_last

    if args.out:
        out = Path(args.out)
    else:
        out = checkpoint_path(args.model, args.seed)
        if args.limit:
            out = out.with_name(f"{out.stem}_limit{args.limit}.pt")
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".partial")
    summary_path = out.with_suffix(".json")

    if out.exists() and not args.force:
        meta = torch.load(out, map_location="cpu", weights_only=True)
        print(f"checkpoint exists: {out}\n  test_acc={meta.get('test_acc'):.4f} "
              f"epochs={meta.get('epochs')} (use --force to retrain)")
        return 0
    if args.force and partial.exists():
        partial.unlink()

    # ---- data --------------------------------------------------------------------
    t0 = time.time()
    splits = eurosat_splits(args.root, seed=args.split_seed, calib_size=args.calib_size)
    images, labels = splits.arrays.images, splits.arrays.labels
    train_idx, test_idx = splits.train_idx, splits.test_idx
    if args.limit:
        g = torch.Generator().manual_seed(args.seed)
        train_idx = train_idx[torch.randperm(train_idx.numel(), generator=g)[:args.limit]].sort().values
        test_idx = test_idx[torch.randperm(test_idx.numel(), generator=g)[:max(args.limit // 4, 1)]].sort().values
    print(f"data: {len(images)} images, train={train_idx.numel()} test={test_idx.numel()} "
          f"(split seed {args.split_seed}), loaded in {time.time() - t0:.1f}s", flush=True)

    torch.manual_seed(args.seed)
    train_loader = ImageBatches(images, labels, train_idx, batch_size=args.batch_size,
                                 shuffle=True, seed=args.seed,
                                 augment=FlipTranslate(args.max_shift), drop_last=True)
    test_loader = ImageBatches(images, labels, test_idx, batch_size=512)

    # ---- model / optimiser ----------------------------------------------------------
    model = build_model(args.model, NUM_CLASSES)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=args.momentum,
                                nesterov=True, weight_decay=args.weight_decay)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=args.lr, epochs=args.epochs, steps_per_epoch=len(train_loader),
        pct_start=args.pct_start)

    hparams = {k: getattr(args, k) for k in (
        "model", "epochs", "batch_size", "lr", "weight_decay", "momentum", "pct_start",
        "label_smoothing", "max_shift", "seed", "split_seed", "calib_size", "limit")}
    hparams.update(optimizer="SGD(nesterov)", schedule="OneCycleLR",
                   augmentation=f"random hflip+vflip, integer translate <= {args.max_shift}px (reflect)",
                   paper_weight_decay=PAPER_WEIGHT_DECAY)

    start_epoch, train_time, history = 0, 0.0, []
    if partial.exists():
        state = torch.load(partial, map_location="cpu", weights_only=True)
        if state.get("hparams") == hparams:
            model.load_state_dict(state["state_dict"])
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            torch.set_rng_state(state["rng_state"])
            start_epoch, train_time, history = state["epoch"], state["train_time_s"], state["history"]
            print(f"resuming from {partial} after epoch {start_epoch}", flush=True)
        else:
            print(f"ignoring {partial}: hyper-parameters differ", flush=True)
    train_loader.epoch = start_epoch  # continue the shuffling sequence

    print(f"model={args.model} params={sum(p.numel() for p in model.parameters()) / 1e6:.2f}M "
          f"threads={torch.get_num_threads()} steps/epoch={len(train_loader)} "
          f"wd={args.weight_decay} (paper: {PAPER_WEIGHT_DECAY})", flush=True)

    # ---- training ---------------------------------------------------------------------
    for epoch in range(start_epoch, args.epochs):
        model.train()
        te = time.time()
        loss_sum, correct, seen = 0.0, 0, 0
        for x, y in train_loader:
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            out_logits = model(x)
            loss = F.cross_entropy(out_logits, y, label_smoothing=args.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            if not math.isfinite(loss.item()):
                print("loss is not finite; lower --lr", file=sys.stderr)
                return 1
            loss_sum += loss.item() * y.numel()
            correct += (out_logits.argmax(1) == y).sum().item()
            seen += y.numel()
        epoch_time = time.time() - te
        train_time += epoch_time
        rec = {"epoch": epoch + 1, "train_loss": loss_sum / seen, "train_acc": correct / seen,
               "lr": scheduler.get_last_lr()[0], "epoch_time_s": epoch_time}
        msg = (f"epoch {epoch + 1:3d}/{args.epochs} loss={rec['train_loss']:.4f} "
               f"acc={rec['train_acc']:.4f} lr={rec['lr']:.4g} time={epoch_time:.1f}s")
        last = epoch + 1 == args.epochs
        if not last and args.eval_every > 0 and (epoch + 1) % args.eval_every == 0:
            rec["test_acc_monitor"], _ = evaluate(model, test_loader, channels_last)
            msg += f" [monitor test_acc={rec['test_acc_monitor']:.4f}]"
        history.append(rec)
        print(msg, flush=True)
        torch.save({"state_dict": model.state_dict(), "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(), "epoch": epoch + 1,
                    "rng_state": torch.get_rng_state(), "train_time_s": train_time,
                    "history": history, "hparams": hparams}, partial)

    # ---- final evaluation + checkpoint ---------------------------------------------------
    test_acc, test_loss = evaluate(model, test_loader, channels_last)
    print(f"final test_acc={test_acc:.4f} test_loss={test_loss:.4f} "
          f"(n={test_idx.numel()}) train_time={train_time:.0f}s", flush=True)
    meta = {
        "model": args.model, "num_classes": NUM_CLASSES, "epochs": args.epochs,
        "hparams": hparams, "test_acc": test_acc, "test_loss": test_loss,
        "n_test": int(test_idx.numel()), "n_train": int(train_idx.numel()),
        "train_time_s": train_time, "threads": torch.get_num_threads(),
        "split_seed": args.split_seed, "test_fraction": 0.2, "calib_size": args.calib_size,
        "seed": args.seed, "normalization": {"mean": list(EUROSAT_MEAN), "std": list(EUROSAT_STD)},
        "torch_version": str(torch.__version__), "torchvision_version": str(torchvision.__version__),
        "history": history,
    }
    state_dict = {k: v.contiguous() for k, v in model.state_dict().items()}
    tmp = out.with_name(out.name + ".tmp")
    torch.save({"state_dict": state_dict, **meta}, tmp)
    tmp.replace(out)
    summary_path.write_text(json.dumps({"checkpoint": str(out), **meta}, indent=2) + "\n")
    if partial.exists():
        partial.unlink()
    print(f"saved {out}\n      {summary_path}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
