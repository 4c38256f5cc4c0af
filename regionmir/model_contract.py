"""What a trained encoder promises: the contract saved beside its weights.

A model directory (local or ``s3://``) holds ``model.pt`` (the ``RegionEncoder`` state dict) and
``contract.json``: the encoder config, the anatomy vocabulary it was trained with and which
anatomy each classifier output means, the crop settings, the intensity convention, the training
stage and its settings, and a **version id** derived from the weights themselves
(``{stage}-{sha256(weights)[:12]}``), so the same weights always carry the same id and two
embedding spaces can never share one. Loading checks the contract against this library and
refuses a model trained on another vocabulary or intensity convention.
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from . import storage
from .anatomy import ANATOMY_NAMES
from .encoder import EncoderConfig, RegionEncoder
from .errors import RegionMIRError
from .intensity import INTENSITY_CONVENTION
from .roi_crop import CropConfig

CONTRACT_FILE = "contract.json"
WEIGHTS_FILE = "model.pt"
FORMAT_VERSION = 1


class ModelContractError(RegionMIRError):
    """A model directory that is missing, incomplete, or made for another contract."""

    reason = "bad_model"


@dataclass(frozen=True)
class ModelContract:
    stage: str  # "pretrain" or "finetune"
    encoder: dict[str, Any]  # EncoderConfig.to_dict()
    class_anatomy_ids: tuple[int, ...]  # classifier output k ↔ anatomy id
    crop: dict[str, Any]  # CropConfig fields
    version_id: str = ""
    anatomy_vocabulary: tuple[str, ...] = ANATOMY_NAMES
    intensity_convention: str = INTENSITY_CONVENTION
    training: dict[str, Any] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION

    @property
    def encoder_config(self) -> EncoderConfig:
        return EncoderConfig.from_dict(self.encoder)

    @property
    def crop_config(self) -> CropConfig:
        return CropConfig(**self.crop)

    def to_json(self) -> str:
        data = asdict(self)
        data["class_anatomy_ids"] = list(self.class_anatomy_ids)
        data["anatomy_vocabulary"] = list(self.anatomy_vocabulary)
        data["class_names"] = [self.anatomy_vocabulary[i] for i in self.class_anatomy_ids]
        return json.dumps(data, indent=1, sort_keys=True)

    @classmethod
    def from_json(cls, text: str, source: str = CONTRACT_FILE) -> ModelContract:
        try:
            data = json.loads(text)
            data.pop("class_names", None)
            data["class_anatomy_ids"] = tuple(data["class_anatomy_ids"])
            data["anatomy_vocabulary"] = tuple(data["anatomy_vocabulary"])
            return cls(**data)
        except (ValueError, KeyError, TypeError) as exc:
            raise ModelContractError(source, f"not a RegionMIR model contract ({exc})") from exc


def weights_version(stage: str, weights: bytes) -> str:
    return f"{stage}-{hashlib.sha256(weights).hexdigest()[:12]}"


def model_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The state dict of the bare encoder (unwrapping DDP), on the CPU."""
    bare = getattr(model, "module", model)
    return {k: v.detach().cpu() for k, v in bare.state_dict().items()}


def save_model(
    directory: str, model: torch.nn.Module, contract: ModelContract, s3: storage.S3Options | None = None
) -> ModelContract:
    """Write ``model.pt`` and ``contract.json``; returns the contract with its version id set."""
    buffer = io.BytesIO()
    torch.save(model_state_dict(model), buffer)
    weights = buffer.getvalue()
    from dataclasses import replace

    contract = replace(contract, version_id=weights_version(contract.stage, weights))
    storage.remove(storage.join(directory, CONTRACT_FILE), s3)  # no old contract over new weights
    storage.write_bytes(storage.join(directory, WEIGHTS_FILE), weights, s3)
    # The contract is written last: a directory with a contract holds complete weights.
    storage.write_text(storage.join(directory, CONTRACT_FILE), contract.to_json(), s3)
    return contract


def resolve_model_dir(uri: str, s3: storage.S3Options | None = None) -> str:
    """``uri`` itself when it holds a contract, else its ``best/`` (a training run's output)."""
    for candidate in (uri, storage.join(uri, "best")):
        if storage.exists(storage.join(candidate, CONTRACT_FILE), s3):
            return candidate
    raise ModelContractError(uri, f"no {CONTRACT_FILE} here or in best/: not a RegionMIR model directory")


def read_contract(uri: str, s3: storage.S3Options | None = None) -> tuple[str, ModelContract]:
    directory = resolve_model_dir(uri, s3)
    path = storage.join(directory, CONTRACT_FILE)
    contract = ModelContract.from_json(storage.read_text(path, s3), path)
    check_contract(contract, path)
    return directory, contract


def check_contract(contract: ModelContract, source: str) -> None:
    if contract.format_version != FORMAT_VERSION:
        raise ModelContractError(
            source, f"contract format {contract.format_version}, this library reads {FORMAT_VERSION}"
        )
    if tuple(contract.anatomy_vocabulary) != ANATOMY_NAMES[: len(contract.anatomy_vocabulary)]:
        raise ModelContractError(source, "trained with another anatomy vocabulary")
    if contract.intensity_convention != INTENSITY_CONVENTION:
        raise ModelContractError(
            source,
            f"trained on intensity convention {contract.intensity_convention!r}, "
            f"this library produces {INTENSITY_CONVENTION!r}",
        )
    encoder = EncoderConfig.from_dict(contract.encoder)
    if encoder.num_classes != len(contract.class_anatomy_ids):
        raise ModelContractError(source, "classifier size and class list disagree")


def load_model(
    uri: str, s3: storage.S3Options | None = None, map_location: str | torch.device = "cpu"
) -> tuple[RegionEncoder, ModelContract]:
    """Rebuild the encoder of a model directory (or a run's ``best/``), checked against its contract."""
    directory, contract = read_contract(uri, s3)
    weights = storage.read_bytes(storage.join(directory, WEIGHTS_FILE), s3)
    if weights_version(contract.stage, weights) != contract.version_id:
        raise ModelContractError(directory, "weights do not match the contract's version id (partial copy?)")
    model = RegionEncoder(contract.encoder_config)
    state = torch.load(io.BytesIO(weights), map_location=map_location, weights_only=True)
    model.load_state_dict(state)
    return model, contract
