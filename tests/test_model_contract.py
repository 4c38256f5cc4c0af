"""Every saved model carries its contract; loading checks it."""

from __future__ import annotations

import json
import os

import pytest
import torch

from regionmir.anatomy import STANDARD_29_IDS
from regionmir.encoder import RegionEncoder, load_preset
from regionmir.errors import StorageError
from regionmir.intensity import INTENSITY_CONVENTION
from regionmir.model_contract import (
    CONTRACT_FILE,
    ModelContract,
    ModelContractError,
    load_model,
    read_contract,
    save_model,
)


def _contract(encoder) -> ModelContract:
    return ModelContract(
        stage="finetune",
        encoder=encoder.to_dict(),
        class_anatomy_ids=tuple(STANDARD_29_IDS),
        crop={"size": encoder.crop_size, "margin": 0.15, "pad_value": 0.0},
        training={"epochs": 1},
    )


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


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("intensity_convention", "uint8 MONOCHROME1", "intensity convention"),
        ("anatomy_vocabulary", ["left lung", "right lung"], "vocabulary"),
        ("format_version", 99, "format"),
    ],
)
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


def test_writes_are_whole_or_absent_and_a_rewritten_model_never_pairs_new_weights_with_an_old_contract(
    tmp_path, monkeypatch
):
    from regionmir import storage

    target = tmp_path / "model"
    storage.write_bytes(str(target / "a.bin"), b"first")
    real_replace = os.replace

    def failing_replace(src, dst):  # the disk fills up at the last moment
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(StorageError, match="No space left"):
        storage.write_bytes(str(target / "a.bin"), b"second, longer")
    monkeypatch.setattr(os, "replace", real_replace)
    assert (target / "a.bin").read_bytes() == b"first"  # the old file, whole
    umask = os.umask(0)
    os.umask(umask)
    assert (target / "a.bin").stat().st_mode & 0o777 == 0o666 & ~umask  # the usual mode, not mkstemp's 0600
    assert [p.name for p in target.iterdir()] == ["a.bin"]  # no partial file left behind
    assert storage.remove(str(target / "a.bin")) and not storage.remove(str(target / "a.bin"))

    encoder = load_preset("resnet10-cpu")
    model = RegionEncoder(encoder)
    contract = _contract(encoder)
    first = save_model(str(target), model, contract)
    seen = []
    real_write = storage.write_bytes

    def watching_write(uri, data, s3=None):  # what a reader would find just before each write
        seen.append((os.path.basename(uri), (target / "contract.json").exists()))
        real_write(uri, data, s3)

    monkeypatch.setattr(storage, "write_bytes", watching_write)
    torch.nn.init.constant_(model.classification_head.bias, 0.5)
    second = save_model(str(target), model, contract)
    assert second.version_id != first.version_id
    assert seen[0] == ("model.pt", False)  # the old contract was gone before new weights landed
    assert load_model(str(target))[1].version_id == second.version_id
