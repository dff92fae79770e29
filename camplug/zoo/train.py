"""Train the demo model on image-level labels only: ``python -m camplug.zoo.train``.

Renders a seeded training set and a validation set with another seed, trains ``DemoCNN``
with AdamW and a one-cycle schedule (random horizontal flips, nothing else), prints the loss
and accuracies per epoch, and writes ``<out>/demo_cnn[_hard].pt`` (the checkpoint that
``load_demo_model`` reads) and ``.json`` (the training record).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..data.synthetic import MEAN, SPLITS, STD, SyntheticLocalization
from .model import DEMO_WIDTHS, DemoCNN, build_demo_model, weights_path

VAL_SEED_OFFSET = 1  # the validation set uses seed + 1: no sample is shared with training


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m camplug.zoo.train",
        description="Train the demo GAP + linear CNN on the synthetic localization set "
        "(image-level labels only).",
    )
    parser.add_argument("--split", choices=SPLITS, default="easy")
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--n-train", type=int, default=10000)
    parser.add_argument("--n-val", type=int, default=1000)
    parser.add_argument("--image-size", type=int, default=96)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=3e-3, help="peak learning rate")
    parser.add_argument("--weight-decay", type=float, default=5e-4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--no-flip", action="store_true", help="disable horizontal flips")
    parser.add_argument(
        "--out", type=Path, default=weights_path().parent,
        help="output directory (default: the package's zoo directory, i.e. the shipped files)",
    )
    args = parser.parse_args(argv)
    for name in ("epochs", "n_train", "n_val", "batch_size", "threads"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    return args


def render_uint8(ds: SyntheticLocalization) -> tuple[torch.Tensor, torch.Tensor]:
    """All images as uint8 [N, S, S, 3] (4x smaller than normalized floats) and int64 labels."""
    rgb = torch.empty((len(ds), ds.image_size, ds.image_size, 3), dtype=torch.uint8)
    labels = torch.empty(len(ds), dtype=torch.int64)
    for i in range(len(ds)):
        sample = ds.render(i)
        rgb[i] = torch.from_numpy(sample.rgb)
        labels[i] = sample.label
    return rgb, labels


def to_input(rgb: torch.Tensor) -> torch.Tensor:
    """uint8 [B, S, S, 3] -> normalized float32 [B, 3, S, S] in channels-last memory."""
    mean = torch.tensor(MEAN).view(1, 3, 1, 1)
    std = torch.tensor(STD).view(1, 3, 1, 1)
    x = rgb.permute(0, 3, 1, 2).float().div_(255.0)
    return ((x - mean) / std).contiguous(memory_format=torch.channels_last)


@torch.no_grad()
def accuracy(model: DemoCNN, rgb: torch.Tensor, labels: torch.Tensor, batch: int = 256) -> float:
    model.eval()
    correct = 0
    for start in range(0, len(labels), batch):
        logits = model(to_input(rgb[start : start + batch]))
        correct += int((logits.argmax(1) == labels[start : start + batch]).sum())
    return correct / len(labels)


def train(args: argparse.Namespace) -> dict[str, object]:
    """Train, write the checkpoint and record, and return the record."""
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    started = time.perf_counter()
    train_ds = SyntheticLocalization(args.n_train, args.split, args.image_size, args.seed)
    val_ds = SyntheticLocalization(
        args.n_val, args.split, args.image_size, args.seed + VAL_SEED_OFFSET
    )
    train_rgb, train_labels = render_uint8(train_ds)
    val_rgb, val_labels = render_uint8(val_ds)
    data_seconds = time.perf_counter() - started
    print(f"rendered {args.n_train} + {args.n_val} images in {data_seconds:.1f} s", flush=True)

    model = build_demo_model(train_ds.num_classes).to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    steps_per_epoch = math.ceil(args.n_train / args.batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=args.lr, total_steps=args.epochs * steps_per_epoch, pct_start=0.2
    )
    order = torch.Generator().manual_seed(args.seed)
    history = []
    for epoch in range(1, args.epochs + 1):
        model.train()
        permutation = torch.randperm(args.n_train, generator=order)
        loss_sum, correct = 0.0, 0
        for start in range(0, args.n_train, args.batch_size):
            idx = permutation[start : start + args.batch_size]
            x = to_input(train_rgb[idx])
            if not args.no_flip:
                flip = torch.rand(len(idx), generator=order) < 0.5
                x = torch.where(flip.view(-1, 1, 1, 1), x.flip(3), x)
            logits = model(x)
            loss = F.cross_entropy(logits, train_labels[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            loss_sum += float(loss.detach()) * len(idx)
            correct += int((logits.argmax(1) == train_labels[idx]).sum())
        row = {
            "epoch": epoch,
            "loss": loss_sum / args.n_train,
            "train_accuracy": correct / args.n_train,
            "val_accuracy": accuracy(model, val_rgb, val_labels),
            "elapsed_s": time.perf_counter() - started,
        }
        history.append(row)
        print(
            f"epoch {epoch:3d}/{args.epochs}  loss {row['loss']:.4f}  "
            f"train acc {row['train_accuracy']:.4f}  val acc {row['val_accuracy']:.4f}  "
            f"[{row['elapsed_s']:.0f} s]",
            flush=True,
        )
    total_seconds = time.perf_counter() - started
    return _write_outputs(args, model.to(memory_format=torch.contiguous_format), train_ds,
                          history, data_seconds, total_seconds)


def _write_outputs(
    args: argparse.Namespace,
    model: DemoCNN,
    train_ds: SyntheticLocalization,
    history: list[dict[str, float]],
    data_seconds: float,
    total_seconds: float,
) -> dict[str, object]:
    args.out.mkdir(parents=True, exist_ok=True)
    weights = args.out / weights_path(args.split).name
    checkpoint = {
        "state_dict": {k: v.contiguous() for k, v in model.state_dict().items()},
        "num_classes": train_ds.num_classes,
        "widths": list(DEMO_WIDTHS),
        "class_names": train_ds.class_names,
        "image_size": args.image_size,
        "split": args.split,
    }
    torch.save(checkpoint, weights)
    record = {
        "split": args.split,
        "class_names": train_ds.class_names,
        "final_val_accuracy": history[-1]["val_accuracy"],
        "final_train_accuracy": history[-1]["train_accuracy"],
        "seed": args.seed,
        "val_seed": args.seed + VAL_SEED_OFFSET,
        "epochs": args.epochs,
        "data": {
            "generator": "camplug.data.synthetic.SyntheticLocalization",
            "n_train": args.n_train,
            "n_val": args.n_val,
            "image_size": args.image_size,
            "mean": list(MEAN),
            "std": list(STD),
        },
        "training": {
            "labels": "image-level only (no boxes or masks)",
            "optimizer": "AdamW",
            "lr_schedule": "OneCycleLR (pct_start 0.2)",
            "peak_lr": args.lr,
            "weight_decay": args.weight_decay,
            "batch_size": args.batch_size,
            "augmentation": "none" if args.no_flip else "random horizontal flip",
        },
        "architecture": {"name": "DemoCNN", "widths": list(DEMO_WIDTHS),
                         "parameters": sum(p.numel() for p in model.parameters())},
        "history": history,
        "time_s": {"data": data_seconds, "total": total_seconds},
        "environment": {
            "threads": args.threads,
            "torch": torch.__version__,
            "numpy": np.__version__,
            "python": platform.python_version(),
            "machine": platform.machine(),
        },
        "command": "python -m camplug.zoo.train " + " ".join(_cli_args(args)),
    }
    weights.with_suffix(".json").write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {weights} and {weights.with_suffix('.json')} ({total_seconds:.0f} s in all)")
    return record


def _cli_args(args: argparse.Namespace) -> list[str]:
    flags = [f"--split {args.split}", f"--epochs {args.epochs}", f"--n-train {args.n_train}",
             f"--n-val {args.n_val}", f"--image-size {args.image_size}",
             f"--batch-size {args.batch_size}", f"--lr {args.lr}",
             f"--weight-decay {args.weight_decay}", f"--seed {args.seed}",
             f"--threads {args.threads}"]
    return flags + (["--no-flip"] if args.no_flip else [])


def main(argv: Sequence[str] | None = None) -> int:
    train(parse_args(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
