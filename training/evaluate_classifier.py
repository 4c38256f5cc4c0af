"""Test-split anatomy accuracy of a trained model, overall and per anatomy (driver side)."""

from __future__ import annotations

import numpy as np

from regionmir.anatomy import ANATOMY_NAMES
from regionmir.classification_metrics import classification_report
from regionmir.inference import embed_crops
from regionmir.model_contract import load_model

from .roi_pipeline import crop_from_context


def evaluate_classifier(model_dir: str, dataset, s3=None, batch_size: int = 256, embed: bool = False) -> dict:
    """Classify every ROI row of ``dataset`` (context rows) with the model in ``model_dir``.

    ``embed``: also return ``embeddings`` ((N, D) float32, the retrieval embedding that
    ``regionmir index`` stores, in the order of ``keys``)."""
    model, contract = load_model(model_dir, s3)
    model.eval()
    crop = contract.crop_config
    lookup = {a: k for k, a in enumerate(contract.class_anatomy_ids)}
    y_true, y_pred, keys, embeddings = [], [], [], []
    for batch in dataset.iter_batches(batch_size=batch_size, batch_format="numpy"):
        keep = [i for i, a in enumerate(batch["anatomy_id"]) if int(a) in lookup]
        if not keep:
            continue
        crops = np.stack([crop_from_context(batch["context"][i], batch["box"][i], crop) for i in keep])
        predicted = embed_crops(model, crops, embeddings=embed)
        y_pred.extend(predicted.probabilities.argmax(axis=1).tolist())
        if embed:
            embeddings.append(predicted.embeddings)
        y_true.extend(lookup[int(batch["anatomy_id"][i])] for i in keep)
        keys.extend(f"{batch['image_id'][i]}#{int(batch['anatomy_id'][i])}" for i in keep)
    names = [ANATOMY_NAMES[a] for a in contract.class_anatomy_ids]
    report = classification_report(np.asarray(y_true), np.asarray(y_pred), names)
    report["model_version"] = contract.version_id
    # keys (image id # anatomy id) name each test crop, so arms tested in another order (Ray Data
    # does not promise one) can be compared crop by crop
    report["y_true"], report["y_pred"], report["keys"] = y_true, y_pred, keys
    if embed:
        report["embeddings"] = np.concatenate(embeddings) if embeddings else np.zeros((0, 0), np.float32)
    return report
