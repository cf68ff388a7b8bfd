#!/usr/bin/env python3
"""Fit y = w*x + b to a CSV (columns x,y) by gradient descent from a seeded random start; print the result.

The last line of the output is one JSON object (dataset, lr, seed, w, b, loss), which is what the sweep
collects from each task's log. Exits 1 when the fit diverges (the learning rate is too large).
"""

import argparse
import csv
import json
import math
import random
from pathlib import Path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", required=True)
    parser.add_argument("--lr", type=float, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=500)
    args = parser.parse_args()

    with open(args.data, newline="") as handle:
        rows = [(float(r["x"]), float(r["y"])) for r in csv.DictReader(handle)]
    start = random.Random(args.seed)
    w, b = start.uniform(-1, 1), start.uniform(-1, 1)
    n = len(rows)
    loss = math.inf
    for epoch in range(1, args.epochs + 1):
        grad_w = sum(2 * (w * x + b - y) * x for x, y in rows) / n
        grad_b = sum(2 * (w * x + b - y) for x, y in rows) / n
        w, b = w - args.lr * grad_w, b - args.lr * grad_b
        loss = sum((w * x + b - y) ** 2 for x, y in rows) / n
        if not math.isfinite(loss):
            print(f"diverged at epoch {epoch} with lr {args.lr}", flush=True)
            return 1
        if epoch % 100 == 0:
            print(f"epoch {epoch}: loss {loss:.4f}", flush=True)
    print(json.dumps({"dataset": Path(args.data).stem, "lr": args.lr, "seed": args.seed, "w": round(w, 4),
                      "b": round(b, 4), "loss": round(loss, 5)}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
