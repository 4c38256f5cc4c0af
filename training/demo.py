"""``make demo``: the pipeline on the embedded default, as far as the project goes today.

1. pictures from the pure library (:mod:`regionmir.demo`): phantom films in the Chest ImaGenome
   layout, a contact sheet, an ROI crop sheet and a two-view augmentation sheet;
2. region-contrastive pretraining then anatomy fine-tuning from it, as two phases of one Ray
   Train run on a local Ray cluster (2 CPU workers, the ``resnet10-cpu`` preset);
3. the fine-tuned model on the test split: overall accuracy, the worst regions, and a
   confusion-matrix picture.

``python -m indexing.demo`` (``make demo``) goes on to index and evaluate.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

from regionmir.anatomy import ANATOMY_NAMES
from regionmir.classification_metrics import confusion_matrix, plot_confusion_matrix
from regionmir.command_help import command_parser
from regionmir.demo import run_demo
from regionmir.encoder import load_preset
from regionmir.roi_crop import CropConfig

from .evaluate_classifier import evaluate_classifier
from .roi_pipeline import RoiPipelineConfig, cached_roi_datasets, list_images
from .run import Phase, TrainOptions, default_cache_root, region_ids, run_phases


def _step(message: str) -> None:
    print(f"[demo] {message}", file=sys.stderr, flush=True)


def train_and_test(
    data: str, out: str, pretrain_epochs: int, finetune_epochs: int, objective: str, workers: int = 2
) -> dict:
    options = TrainOptions(data=data, out=os.path.join(out, "training"), workers=workers, also_cache=("test",))
    phases = [
        Phase("pretrain", "pretrain", pretrain_epochs, objective=objective),
        Phase("finetune", "finetune", finetune_epochs, init="phase:pretrain"),
    ]
    _step(
        f"training on Ray: {objective} pretraining ({pretrain_epochs} epochs), then fine-tuning "
        f"({finetune_epochs} epochs) from it"
    )
    summary = run_phases(options, phases)
    model = summary["phases"]["finetune"]["best"]
    _step(f"testing {model} on the test split")
    records, _ = list_images(data, None, ("test",))
    pipeline = RoiPipelineConfig(
        crop=CropConfig(size=load_preset(options.preset).crop_size), anatomy_ids=region_ids(options.regions)
    )
    test = cached_roi_datasets(records, pipeline, default_cache_root(options), None)["datasets"]["test"]
    report = evaluate_classifier(model, test)
    picture = os.path.join(out, "confusion_matrix.png")
    names = [ANATOMY_NAMES[a] for a in region_ids(options.regions)]
    matrix = confusion_matrix(np.asarray(report["y_true"]), np.asarray(report["y_pred"]), len(names))
    plot_confusion_matrix(
        matrix, names, picture, title=f"Fine-tuned model on the test split: accuracy {report['accuracy']:.1%}"
    )
    worst = sorted(report["per_class"].items(), key=lambda kv: kv[1]["accuracy"])[:3]
    return {
        "model": model,
        "model_version": report["model_version"],
        "test_accuracy": report["accuracy"],
        "balanced_test_accuracy": report["balanced_accuracy"],
        "test_crops": len(report["y_true"]),
        "worst_regions": {name: round(v["accuracy"], 4) for name, v in worst},
        "pretrain_final_loss": summary["phases"]["pretrain"]["final_metrics"]["loss"],
        "best_val_accuracy": summary["phases"]["finetune"]["best_metrics"].get("val_accuracy"),
        "confusion_matrix": picture,
        "training_seconds": summary["seconds"],
    }


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="demo-output")
    parser.add_argument("--images", type=int, default=60)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--pretrain-epochs", type=int, default=2)
    parser.add_argument("--finetune-epochs", type=int, default=2)
    parser.add_argument("--objective", choices=("simclr", "supcon"), default="supcon")


def synthesise_and_train(args: argparse.Namespace) -> dict:
    """Steps 1–3: pictures and phantom data, pretraining + fine-tuning, the test accuracy."""
    if os.path.exists(os.path.join(args.out, "training")):
        import shutil

        shutil.rmtree(os.path.join(args.out, "training"))  # a demo run always trains afresh
    pictures = run_demo(args.out, args.images, args.size, args.seed)
    trained = train_and_test(pictures["data"], args.out, args.pretrain_epochs, args.finetune_epochs, args.objective)
    return {
        "data": pictures["data"],
        "films": pictures["films"],
        "splits": pictures["splits"],
        **trained,
        "pictures": {**pictures["pictures"], "confusion_matrix": trained["confusion_matrix"]},
    }


def print_pictures(pictures: dict) -> None:
    print("\nPictures:")
    for name, path in pictures.items():
        print(f"  {name:20s} {os.path.abspath(path) if '://' not in str(path) else path}")


def main(argv: list[str] | None = None) -> int:
    parser = command_parser(prog="python -m training.demo", description=__doc__.splitlines()[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    started = time.perf_counter()
    summary = synthesise_and_train(args)
    summary["seconds"] = round(time.perf_counter() - started, 1)
    print(json.dumps(summary, indent=1, default=str))
    print_pictures(summary["pictures"])
    print(
        f"\nTest accuracy of the fine-tuned model: {summary['test_accuracy']:.2%} "
        f"({summary['test_crops']} test crops); demo finished in {summary['seconds']} s."
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
