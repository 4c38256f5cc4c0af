"""``regionmir ablate``: the paper's comparison, trained on the same data and budget.

(a) supervised from scratch, (b) SimCLR region pretraining + fine-tuning, (c) supervised-
contrastive region pretraining + fine-tuning, (d) co-training (cross-entropy + contrastive) from
scratch. The baselines (a) and (d) get as many epochs as pretraining + fine-tuning together, so
every arm sees the same number of passes over the training crops. Every arm is evaluated on the
test split (overall and per anatomy over the trained regions) and the table is written as
``OUT/ablation.json`` and ``OUT/ablation.md``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from typing import Sequence

from regionmir import storage
from regionmir.errors import RegionMIRError
from regionmir.storage import S3Options

from .evaluate_classifier import evaluate_classifier
from .roi_pipeline import RoiPipelineConfig, cached_roi_datasets, list_images
from .run import TrainOptions, default_cache_root, region_ids, run_training

PAPER = {"best baseline (paper)": 92.24, "region pretraining (paper)": 94.12}


def run_ablation(base: TrainOptions, pretrain_epochs: int, finetune_epochs: int,
                 arms: Sequence[str] = ("a", "b", "c", "d")) -> dict:
    started = time.perf_counter()
    s3 = S3Options.from_env()
    out = base.out
    total = pretrain_epochs + finetune_epochs
    plans = {
        "a": ("supervised from scratch", [replace(base, stage="finetune", epochs=total, out=storage.join(out, "a-supervised"))]),
        "b": ("SimCLR region pretraining + fine-tune", [
            replace(base, stage="pretrain", objective="simclr", epochs=pretrain_epochs, out=storage.join(out, "b-simclr-pretrain")),
            replace(base, stage="finetune", epochs=finetune_epochs, init=storage.join(out, "b-simclr-pretrain"),
                    out=storage.join(out, "b-simclr-finetune"))]),
        "c": ("SupCon region pretraining + fine-tune", [
            replace(base, stage="pretrain", objective="supcon", epochs=pretrain_epochs, out=storage.join(out, "c-supcon-pretrain")),
            replace(base, stage="finetune", epochs=finetune_epochs, init=storage.join(out, "c-supcon-pretrain"),
                    out=storage.join(out, "c-supcon-finetune"))]),
        "d": ("co-training (CE + SimCLR)", [replace(base, stage="finetune", cotrain=True, objective="simclr", epochs=total,
                                                    out=storage.join(out, "d-cotrain"))]),
    }
    rows = []
    test_data = None
    for arm in arms:
        name, steps = plans[arm]
        arm_started = time.perf_counter()
        print(f"[ablate] ({arm}) {name}", flush=True)
        summary = None
        for options in steps:
            summary = run_training(options, s3)
        if test_data is None:
            records, _ = list_images(base.data, s3, ("test",))
            from regionmir.encoder import load_preset

            crop_size = load_preset(base.preset).crop_size
            from regionmir.roi_crop import CropConfig

            pipeline = RoiPipelineConfig(crop=CropConfig(size=crop_size, margin=0.15),
                                         anatomy_ids=region_ids(base.regions))
            test_data = cached_roi_datasets(records, pipeline, default_cache_root(base) or
                                            storage.join(out, "crop-cache"), s3)["datasets"]["test"]
        report = evaluate_classifier(summary["best"], test_data, s3)
        report.pop("y_true"), report.pop("y_pred")
        rows.append({"arm": arm, "name": name, "test_accuracy": report["accuracy"],
                     "balanced_accuracy": report["balanced_accuracy"],
                     "per_anatomy": {k: v["accuracy"] for k, v in report["per_class"].items()},
                     "model_version": report["model_version"], "model": summary["best"],
                     "minutes": round((time.perf_counter() - arm_started) / 60, 1)})
        print(f"[ablate] ({arm}) test accuracy {report['accuracy']:.4f}", flush=True)
    result = {"rows": rows, "paper": PAPER, "pretrain_epochs": pretrain_epochs, "finetune_epochs": finetune_epochs,
              "data": base.data, "preset": base.preset, "regions": base.regions,
              "minutes": round((time.perf_counter() - started) / 60, 1)}
    storage.write_text(storage.join(out, "ablation.json"), json.dumps(result, indent=1), s3)
    storage.write_text(storage.join(out, "ablation.md"), markdown_table(result), s3)
    return result


def markdown_table(result: dict) -> str:
    rows = result["rows"]
    lines = ["| arm | method | test accuracy | balanced accuracy | minutes |", "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['arm']} | {r['name']} | {100 * r['test_accuracy']:.2f} % | "
                     f"{100 * r['balanced_accuracy']:.2f} % | {r['minutes']} |")
    for name, value in result["paper"].items():
        lines.append(f"| – | {name} | {value:.2f} % | | |")
    anatomies = sorted({a for r in rows for a in r["per_anatomy"]})
    lines += ["", "| anatomy | " + " | ".join(f"({r['arm']})" for r in rows) + " |",
              "|---|" + "---|" * len(rows)]
    for anatomy in anatomies:
        cells = [f"{100 * r['per_anatomy'][anatomy]:.1f}" if anatomy in r["per_anatomy"] else "–" for r in rows]
        lines.append(f"| {anatomy} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def ablate_main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="regionmir ablate", description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--gpu", action="store_true")
    parser.add_argument("--pretrain-epochs", type=int, default=3)
    parser.add_argument("--finetune-epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--preset", default="resnet10-cpu")
    parser.add_argument("--regions", choices=("standard29", "all36"), default="standard29")
    parser.add_argument("--arms", default="abcd", help="which arms to run, e.g. 'ab'")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(list(argv))
    base = TrainOptions(data=args.data, out=args.out, workers=args.workers, gpu=args.gpu, batch_size=args.batch_size,
                        preset=args.preset, regions=args.regions, seed=args.seed)
    try:
        result = run_ablation(base, args.pretrain_epochs, args.finetune_epochs, tuple(args.arms))
    except RegionMIRError as exc:
        print(f"regionmir ablate: {exc}", file=sys.stderr)
        return 2
    print(markdown_table(result))
    return 0
