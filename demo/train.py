"""Step 2 of the demo: region-contrastive pretraining, then anatomy fine-tuning from it, on Ray Train.

Two phases of one Ray Train run on a local Ray (:func:`training.run.run_phases`), then the fine-tuned
classifier on the test split's crops, drawn as a confusion matrix.
"""

from __future__ import annotations

import logging
import os

import numpy as np

from regionmir.anatomy import ANATOMY_NAMES
from regionmir.classification_metrics import confusion_matrix, plot_confusion_matrix
from regionmir.dataset import films_by_split
from regionmir.encoder import load_preset
from regionmir.roi_crop import CropConfig
from training.evaluate_classifier import evaluate_classifier
from training.roi_pipeline import RoiPipelineConfig, cached_roi_datasets
from training.run import Phase, TrainOptions, default_cache_root, region_ids, run_phases

log = logging.getLogger(__name__)


def train_and_test(
    data: str, out: str, pretrain_epochs: int, finetune_epochs: int, objective: str, workers: int = 2
) -> dict:
    options = TrainOptions(data=data, out=os.path.join(out, "training"), workers=workers, also_cache=("test",))
    phases = [
        Phase("pretrain", "pretrain", pretrain_epochs, objective=objective),
        Phase("finetune", "finetune", finetune_epochs, init="phase:pretrain"),
    ]
    summary = run_phases(options, phases)
    model = summary["phases"]["finetune"]["best"]
    log.info(f"testing {model} on the test split")
    records, _ = films_by_split(data, None, ("test",))
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
