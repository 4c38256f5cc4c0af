"""How fast ``regionmir synth`` renders, per preset and process count, in one run, one JSON line.

    .venv/bin/python benchmarks/synth_rate.py [--images 40] [--size 256]

Writes ``--images`` PNG films of each preset into a temporary folder with 1 process and with one
process per core (the default), and prints films per second for each, the ratios between them,
and whether the two process counts wrote the same bytes.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from regionmir.synth.dataset_writer import default_workers, write_phantom_dataset


def _digest(root: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        if path.is_file() and path.name != "synth_info.json":
            h.update(str(path.relative_to(root)).encode())
            h.update(path.read_bytes())
    return h.hexdigest()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=40)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--presets", default="realistic,classic")
    args = parser.parse_args(argv)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    result: dict = {
        "benchmark": "synth_rate",
        "images": args.images,
        "size": args.size,
        "cores": cores,
        "load_average": os.getloadavg()[0],
        "presets": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        for preset in args.presets.split(","):
            row = {}
            digests = {}
            for label, workers in (("one_process", 1), ("default", default_workers(args.images))):
                out = Path(tmp) / f"{preset}-{label}"
                start = time.perf_counter()
                write_phantom_dataset(
                    str(out),
                    images=args.images,
                    size=args.size,
                    seed=args.seed,
                    preset=preset,
                    workers=workers,
                    progress=False,
                )
                seconds = time.perf_counter() - start
                row[label] = {
                    "workers": workers,
                    "seconds": round(seconds, 2),
                    "films_per_s": round(args.images / seconds, 2),
                }
                digests[label] = _digest(out)
            row["speed_up"] = round(row["default"]["films_per_s"] / row["one_process"]["films_per_s"], 2)
            row["same_bytes"] = digests["one_process"] == digests["default"]
            result["presets"][preset] = row
    if {"realistic", "classic"} <= set(result["presets"]):
        p = result["presets"]
        result["realistic_over_classic_one_process"] = round(
            p["realistic"]["one_process"]["films_per_s"] / p["classic"]["one_process"]["films_per_s"], 2
        )
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
