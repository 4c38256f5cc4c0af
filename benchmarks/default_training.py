"""What the shipped training defaults cost and reach: ``pretrain`` then ``finetune`` with no flags.

Runs, through the real commands and side by side in one run, the current defaults (SupCon
pretraining 8 epochs → fine-tuning 8 epochs) and the previous ones (SimCLR 3 → fine-tuning 4), each
on the same data with 2 CPU workers, and prints one JSON line per arm and a last JSON object::

    {"arms": {"defaults": {"minutes", "training_minutes", "val_accuracy"}, "previous": {...}},
     "minutes_ratio": defaults / previous, "films": {...}}

``minutes`` is wall time of both commands (worker-group start-ups included); the goal is that the
defaults train within 15 minutes on a 2-core machine for a data set of the real films' size (174
training films: ``--images 250``). Accuracy here is the best validation accuracy (phantoms; the
test figures come from ``regionmir evaluate``).

Run: ``.venv/bin/python benchmarks/default_training.py [--images 250] [--data DATA]``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

ARMS = {
    "defaults": ([], []),
    "previous": (["--objective", "simclr", "--epochs", "3"], ["--epochs", "4"]),
}


def regionmir(args: list[str]) -> dict:
    done = subprocess.run([sys.executable, "-m", "regionmir.cli", *args], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"regionmir {' '.join(args)} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout[done.stdout.index("{") :])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", help="a data set (default: synthesise --images phantom films)")
    parser.add_argument("--images", type=int, default=250)
    parser.add_argument("--arms", default="defaults,previous")
    args = parser.parse_args(argv)
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    with tempfile.TemporaryDirectory(prefix="regionmir-defaults-") as scratch:
        data = args.data or os.path.join(scratch, "data")
        if not args.data:
            regionmir(["synth", "--out", data, "--images", str(args.images), "--size", "256", "--quiet"])
        results = {}
        for arm in args.arms.split(","):
            pre_flags, fine_flags = ARMS[arm]
            out = os.path.join(scratch, arm)
            started = time.perf_counter()
            pre = regionmir(["pretrain", "--data", data, "--out", f"{out}/pre", *pre_flags])
            fine = regionmir(["finetune", "--data", data, "--init", f"{out}/pre", "--out", f"{out}/fine", *fine_flags])
            results[arm] = {
                "minutes": round((time.perf_counter() - started) / 60, 2),
                "training_minutes": round((pre["seconds"] + fine["seconds"]) / 60, 2),
                "val_accuracy": fine["best_metrics"].get("val_accuracy"),
                "films": fine["films"],
            }
            print(json.dumps({arm: results[arm]}), flush=True)
    summary = {"arms": results}
    if {"defaults", "previous"} <= results.keys():
        summary["minutes_ratio"] = round(results["defaults"]["minutes"] / results["previous"]["minutes"], 2)
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
