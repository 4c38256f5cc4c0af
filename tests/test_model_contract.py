"""Every saved model carries its contract; loading checks it."""

from __future__ import annotations

import json

import pytest
import torch

from regionmir.anatomy import STANDARD_29_IDS
from regionmir.encoder import RegionEncoder, load_preset
from regionmir.intensity import INTENSITY_CONVENTION
from regionmir.model_contract import (CONTRACT_FILE, ModelContract, ModelContractError, load_model,
                                      read_contract, save_model)


def _contract(encoder) -> ModelContract:
    return ModelContract(stage="finetune", encoder=encoder.to_dict(), class_anatomy_ids=tuple(STANDARD_29_IDS),
                         crop={"size": encoder.crop_size, "margin": 0.15, "pad_value": 0.0},
                         training={"epochs": 1})


def test_round_trip_keeps_weights_and_contract(tmp_path):
    encoder = load_preset("resnet10-cpu")
    torch.manual_seed(0)
    model = RegionEncoder(encoder).eval()
    saved = save_model(str(tmp_path / "m"), model, _contract(encoder))
    assert saved.version_id.startswith("finetune-") and len(saved.version_id) == len("finetune-") + 12
    loaded, contract = load_model(str(tmp_path / "m"))
    loaded.eval()
    x = torch.rand(2, 1, 32, 32)
    assert torch.equal(model.embed(x), loaded.embed(x))
    assert contract.version_id == saved.version_id
    assert contract.intensity_convention == INTENSITY_CONVENTION
    written = json.loads((tmp_path / "m" / CONTRACT_FILE).read_text())
    assert written["class_names"][0] == "right lung" and len(written["class_names"]) == 29
    # the same weights always give the same version id
    assert save_model(str(tmp_path / "again"), model, _contract(encoder)).version_id == saved.version_id


def test_a_training_run_folder_resolves_to_its_best_model(tmp_path):
    encoder = load_preset("resnet10-cpu")
    save_model(str(tmp_path / "run" / "best"), RegionEncoder(encoder), _contract(encoder))
    directory, _ = read_contract(str(tmp_path / "run"))
    assert directory.endswith("best")


@pytest.mark.parametrize("field, value, message", [
    ("intensity_convention", "uint8 MONOCHROME1", "intensity convention"),
    ("anatomy_vocabulary", ["left lung", "right lung"], "vocabulary"),
    ("format_version", 99, "format"),
])
def test_foreign_contracts_are_refused(tmp_path, field, value, message):
    encoder = load_preset("resnet10-cpu")
    save_model(str(tmp_path), RegionEncoder(encoder), _contract(encoder))
    data = json.loads((tmp_path / CONTRACT_FILE).read_text())
    data[field] = value
    (tmp_path / CONTRACT_FILE).write_text(json.dumps(data))
    with pytest.raises(ModelContractError, match=message):
        load_model(str(tmp_path))


def test_weights_that_do_not_match_the_version_are_refused(tmp_path):
    encoder = load_preset("resnet10-cpu")
    save_model(str(tmp_path), RegionEncoder(encoder), _contract(encoder))
    torch.save(RegionEncoder(encoder).state_dict(), tmp_path / "model.pt")  # other weights
    with pytest.raises(ModelContractError, match="version id"):
        load_model(str(tmp_path))


def test_missing_model_directory_is_named(tmp_path):
    with pytest.raises(ModelContractError, match="not a RegionMIR model directory"):
        load_model(str(tmp_path / "nothing"))
