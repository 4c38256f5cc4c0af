"""The one inference path: crops → L2-normalised embeddings and softmax probabilities, the same
numbers whichever layer asks (the service's encoder runtime, the index job's actors)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from regionmir.encoder import RegionEncoder, load_preset
from regionmir.inference import embed_crops


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return RegionEncoder(load_preset("resnet10-cpu")).eval()


def _crops(n: int, size: int) -> np.ndarray:
    return np.random.default_rng(1).random((n, size, size), dtype=np.float32)


def test_embeddings_are_unit_vectors_and_probabilities_a_distribution(model):
    size = model.config.crop_size
    predicted = embed_crops(model, _crops(5, size))
    assert predicted.embeddings.shape == (5, model.config.embedding_dim)
    assert predicted.probabilities.shape == (5, model.config.num_classes)
    assert predicted.embeddings.dtype == predicted.probabilities.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(predicted.embeddings, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(predicted.probabilities.sum(axis=1), 1.0, atol=1e-5)
    with torch.no_grad():
        logits = model(torch.from_numpy(_crops(5, size))[:, None], heads=("logits",))["logits"]
    assert (predicted.probabilities.argmax(axis=1) == logits.argmax(1).numpy()).all()


def test_classification_only_and_empty_batches_keep_their_widths(model):
    size = model.config.crop_size
    only = embed_crops(model, _crops(3, size), embeddings=False)
    both = embed_crops(model, _crops(3, size))
    assert only.embeddings.shape == (3, 0)
    np.testing.assert_allclose(only.probabilities, both.probabilities, atol=1e-6)
    empty = embed_crops(model, np.zeros((0, size, size), np.float32))
    assert empty.embeddings.shape == (0, model.config.embedding_dim)
    assert empty.probabilities.shape == (0, model.config.num_classes)
    with pytest.raises(ValueError, match="expected crops"):
        embed_crops(model, np.zeros((size, size), np.float32))


def test_the_services_encoder_runtime_and_the_index_actor_give_the_same_numbers(model, tmp_path):
    from dataclasses import asdict

    from indexing.roi_embedding import RegionEmbedder
    from regionmir.anatomy import STANDARD_29_IDS
    from regionmir.model_contract import ModelContract, save_model
    from regionmir.roi_crop import CropConfig
    from serving.runtime import EncoderRuntime

    config = load_preset("resnet10-cpu")
    contract = ModelContract(
        stage="finetune",
        encoder=config.to_dict(),
        class_anatomy_ids=tuple(STANDARD_29_IDS),
        crop=asdict(CropConfig(size=config.crop_size)),
        training={"test": "random init"},
    )
    torch.manual_seed(3)
    save_model(str(tmp_path / "model"), RegionEncoder(config), contract)
    crops = _crops(4, config.crop_size)
    served = EncoderRuntime(str(tmp_path / "model"), device="cpu").forward(crops)
    indexed = RegionEmbedder(str(tmp_path / "model"))({"crop": crops.copy()})
    np.testing.assert_allclose(served["embeddings"], indexed["vector"], atol=1e-6)
    assert (np.asarray(STANDARD_29_IDS)[served["probabilities"].argmax(1)] == indexed["predicted_anatomy_id"]).all()
