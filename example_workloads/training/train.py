#!/usr/bin/env python3
"""A training-style job: fit y = w*x + b to a CSV by gradient descent, resuming from a checkpoint.

Reads --data (columns x,y), continues from --checkpoint when it exists, and writes the checkpoint
atomically after every --save-every epochs and at the end, so a job cut short resumes where it stopped.
"""

import argparse
import csv
import json
import os


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", required=True)
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--epochs", type=int, default=300)
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--save-every", type=int, default=50)
    args = parser.parse_args()

    with open(args.data, newline="") as handle:
        rows = [(float(r["x"]), float(r["y"])) for r in csv.DictReader(handle)]
    state = {"epoch": 0, "w": 0.0, "b": 0.0, "loss": None}
    if os.path.exists(args.checkpoint):
        with open(args.checkpoint) as handle:
            state = json.load(handle)
        print(f"resuming from epoch {state['epoch']}", flush=True)

    def save() -> None:
        tmp = f"{args.checkpoint}.tmp"
        with open(tmp, "w") as handle:
            json.dump(state, handle)
        os.replace(tmp, args.checkpoint)

    n = len(rows)
    while state["epoch"] < args.epochs:
        w, b = state["w"], state["b"]
        grad_w = sum(2 * (w * x + b - y) * x for x, y in rows) / n
        grad_b = sum(2 * (w * x + b - y) for x, y in rows) / n
        state["w"], state["b"] = w - args.lr * grad_w, b - args.lr * grad_b
        state["loss"] = sum((state["w"] * x + state["b"] - y) ** 2 for x, y in rows) / n
        state["epoch"] += 1
        if state["epoch"] % args.save_every == 0:
            save()
            print(f"epoch {state['epoch']}: loss {state['loss']:.4f}", flush=True)
    save()
    print(f"done: w={state['w']:.3f} b={state['b']:.3f} loss={state['loss']:.4f}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
