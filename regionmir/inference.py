"""The one inference path: ROI crops → embeddings and anatomy probabilities.

The query service (:class:`serving.runtime.EncoderRuntime`), the index job's encoder actors
(:mod:`indexing.roi_embedding`), ``evaluate``'s localisation and the classifier test
(:mod:`training.evaluate_classifier`) all call :func:`embed_crops`, so what is indexed, what is
queried and what is measured come from the same forward pass: eval mode, no autograd, the
embedding L2-normalised in float32, probabilities a float32 softmax over the model's classes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .encoder import RegionEncoder


@dataclass(frozen=True)
class CropPredictions:
    """``embeddings`` ``(N, D)`` (L2-normalised; empty when not asked for) and ``probabilities``
    ``(N, C)`` over the model's classes (``contract.class_anatomy_ids`` order), both float32."""

    embeddings: np.ndarray
    probabilities: np.ndarray


def embed_crops(
    model: RegionEncoder,
    crops: np.ndarray,
    *,
    device: torch.device | str | None = None,
    embeddings: bool = True,
) -> CropPredictions:
    """Run ``model`` (in eval mode) on ``crops`` float32 ``(N, S, S)`` in [0, 1].

    ``embeddings=False`` skips the embedding output (classification only). An empty batch gives
    empty arrays of the right widths.
    """
    if model.training:
        raise ValueError("embed_crops needs the model in eval mode (model.eval()): batch statistics would change it")
    crops = np.ascontiguousarray(crops, dtype=np.float32)
    if crops.ndim != 3:
        raise ValueError(f"expected crops (N, S, S), got shape {crops.shape}")
    if crops.shape[0] == 0:
        width = model.config.embedding_dim if embeddings else 0
        return CropPredictions(np.zeros((0, width), np.float32), np.zeros((0, model.config.num_classes), np.float32))
    device = torch.device(device) if device is not None else next(model.parameters()).device
    x = torch.from_numpy(crops)[:, None].to(device)
    with torch.inference_mode():
        out = model(x, heads=("embedding", "logits") if embeddings else ("logits",))
        probabilities = torch.softmax(out["logits"].float(), dim=1).cpu().numpy().astype(np.float32)
        embedded = out["embedding"].float().cpu().numpy() if embeddings else np.zeros((crops.shape[0], 0), np.float32)
    return CropPredictions(embedded, probabilities)
