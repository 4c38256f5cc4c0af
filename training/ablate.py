"""``regionmir ablate``: the paper's comparison, trained on the same data and budget.

All arms are phases of one Ray Train run (one worker group; see :mod:`training.train_loop`).

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
from typing import Sequence

from regionmir import storage
from regionmir.errors import RegionMIRError
from regionmir.storage import S3Options

from regionmir.encoder import load_preset
from regionmir.errors import DatasetError
from regionmir.roi_crop import CropConfig

from .evaluate_classifier import evaluate_classifier
from .roi_pipeline import RoiPipelineConfig, cached_roi_datasets, list_images
from .run import Phase, TrainOptions, default_cache_root, region_ids, run_phases

PAPER = {"best baseline (paper)": 92.24, "region pretraining (paper)": 94.12}


ARMS = {
    "a": "supervised from scratch",
    "b": "SimCLR region pretraining + fine-tune",
    "c": "SupCon region pretraining + fine-tune",
    "d": "co-training (CE + SimCLR)",
}


def ablation_phases(pretrain_epochs: int, finetune_epochs: int, arms: Sequence[str]) -> list[tuple[str, list[Phase]]]:
    """Each arm's phases; (a) and (d) get as many epochs as pretraining + fine-tuning together."""
    total = pretrain_epochs + finetune_epochs
    plans = {
        "a": [Phase("a-supervised", "finetune", total)],
        "b": [Phase("b-simclr-pretrain", "pretrain", pretrain_epochs, objective="simclr"),
              Phase("b-simclr-finetune", "finetune", finetune_epochs, init="phase:b-simclr-pretrain")],
        "c": [Phase("c-supcon-pretrain", "pretrain", pretrain_epochs, objective="supcon"),
              Phase("c-supcon-finetune", "finetune", finetune_epochs, init="phase:c-supcon-pretrain")],
        "d": [Phase("d-cotrain", "finetune", total, objective="simclr", cotrain=True)],
    }
    unknown = [arm for arm in arms if arm not in plans]
    if unknown:
        raise ValueError(f"unknown arm(s) {unknown}: choose from {sorted(plans)}")
    return [(arm, plans[arm]) for arm in arms]


def run_ablation(base: TrainOptions, pretrain_epochs: int, finetune_epochs: int,
                 arms: Sequence[str] = ("a", "b", "c", "d")) -> dict:
    """Train every arm as phases of one Ray Train run, then test each arm's best model."""
    started = time.perf_counter()
    s3 = S3Options.from_env()
    out = base.out
    plan = ablation_phases(pretrain_epochs, finetune_epochs, arms)
    summary = run_phases(base, [phase for _, phases in plan for phase in phases], s3)
    trained = time.perf_counter()
    records, _ = list_images(base.data, s3, ("test",))
    if not records["test"]:
        raise DatasetError(base.data, "no test films (split 'test' is empty): nothing to compare the arms on")
    crop_size = load_preset(base.preset).crop_size
    pipeline = RoiPipelineConfig(crop=CropConfig(size=crop_size, margin=0.15), anatomy_ids=region_ids(base.regions))
    test_data = cached_roi_datasets(records, pipeline, default_cache_root(base) or storage.join(out, "crop-cache"),
                                    s3)["datasets"]["test"]
    epoch_seconds, curves = _phase_history(summary, s3)
    rows = []
    for arm, phases in plan:
        last = phases[-1].name
        report = evaluate_classifier(summary["phases"][last]["best"], test_data, s3)
        report.pop("y_true"), report.pop("y_pred")
        rows.append({"arm": arm, "name": ARMS[arm], "test_accuracy": report["accuracy"],
                     "balanced_accuracy": report["balanced_accuracy"],
                     "val_accuracy": summary["phases"][last]["best_metrics"].get("val_accuracy"),
                     "per_anatomy": {k: v["accuracy"] for k, v in report["per_class"].items()},
                     "model_version": report["model_version"], "model": summary["phases"][last]["best"],
                     "train_minutes": round(sum(epoch_seconds.get(p.name, 0.0) for p in phases) / 60, 1),
                     "val_accuracy_by_epoch": curves.get(last, []),
                     "epochs": {p.name: p.epochs for p in phases}})
        print(f"[ablate] ({arm}) {ARMS[arm]}: test accuracy {report['accuracy']:.4f}", flush=True)
    result = {"rows": rows, "paper": PAPER, "pretrain_epochs": pretrain_epochs, "finetune_epochs": finetune_epochs,
              "data": base.data, "preset": base.preset, "regions": base.regions, "workers": base.workers,
              "train_films": summary["films"].get("train"), "train_crops": summary["train_crops"],
              "test_films": len(records["test"]),
              "minutes": round((time.perf_counter() - started) / 60, 1),
              "training_minutes": round((trained - started) / 60, 1)}
    storage.write_text(storage.join(out, "ablation.json"), json.dumps(result, indent=1), s3)
    storage.write_text(storage.join(out, "ablation.md"), markdown_table(result), s3)
    return result


def _phase_history(summary: dict, s3: S3Options | None) -> tuple[dict[str, float], dict[str, list[float]]]:
    """Training seconds and the validation-accuracy curve per phase, from the run's per-epoch metrics."""
    seconds: dict[str, float] = {}
    curves: dict[str, list[float]] = {}
    path = storage.join(summary["options"]["out"], "metrics.jsonl")
    for line in storage.read_text(path, s3).splitlines():
        m = json.loads(line)
        seconds[m["phase"]] = seconds.get(m["phase"], 0.0) + m["train_crops"] / max(1e-9, m["crops_per_s"])
        if "val_accuracy" in m:
            curves.setdefault(m["phase"], []).append(round(float(m["val_accuracy"]), 4))
    return seconds, curves


def markdown_table(result: dict) -> str:
    rows = result["rows"]
    lines = [f"Data: {result['data']} ({result['train_films']} training films, {result['train_crops']} training "
             f"crops, {result['test_films']} test films); preset {result['preset']}, {result['workers']} worker(s); "
             f"{result['minutes']} min in all.", "",
             "| arm | method | epochs | validation accuracy by (fine-tuning) epoch | best validation | test accuracy "
             "| balanced test accuracy | training min |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        val = f"{100 * r['val_accuracy']:.2f} %" if r.get("val_accuracy") is not None else "–"
        curve = " → ".join(f"{100 * v:.1f}" for v in r.get("val_accuracy_by_epoch", [])) or "–"
        epochs = " + ".join(str(e) for e in r["epochs"].values())
        lines.append(f"| {r['arm']} | {r['name']} | {epochs} | {curve} | {val} | {100 * r['test_accuracy']:.2f} % | "
                     f"{100 * r['balanced_accuracy']:.2f} % | {r['train_minutes']} |")
    for name, value in result["paper"].items():
        lines.append(f"| – | {name} | | | | {value:.2f} % | | |")
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
                        preset=args.preset, regions=args.regions, seed=args.seed, also_cache=("test",))
    try:
        result = run_ablation(base, args.pretrain_epochs, args.finetune_epochs, tuple(args.arms))
    except RegionMIRError as exc:
        print(f"regionmir ablate: {exc}", file=sys.stderr)
        return 2
    print(markdown_table(result))
    return 0
