"""What the deployments hold, as plain classes (no Ray): the loaded encoder and the index connection.

:class:`EncoderRuntime` loads the model once and turns crop stacks into embeddings and anatomy
probabilities; :class:`SearchRuntime` owns the :class:`~indexing.region_index.RegionIndex` and
answers searches, look-ups by key and its own status. The Ray Serve deployments
(:mod:`serving.deployments`) wrap them; :func:`serving.backends.local_backend` calls them in-process
(tests, a laptop without Ray).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any

import numpy as np

from indexing.index_rows import RegionHit
from indexing.index_schema import KEY_RE, model_collection_name
from indexing.region_index import RegionIndex, search_resident
from indexing.resident_collection import ResidentCollection
from regionmir.dicomweb import is_dicomweb
from regionmir.errors import RegionIndexError
from regionmir.inference import embed_crops
from regionmir.model_contract import load_model
from regionmir.sealed_location import SealedLocationError, open_location

log = logging.getLogger("ray.serve")

#: Row keys are 32 lowercase hex characters (:func:`indexing.index_schema.row_key`).


class EncoderRuntime:
    """The encoder in eval mode on the best device: crops ``(N, S, S)`` → embeddings + probabilities."""

    def __init__(self, model_dir: str, *, device: str | None = None, threads: int | None = None):
        import torch

        from regionmir.storage import S3Options

        if threads:
            torch.set_num_threads(int(threads))
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        model, contract = load_model(model_dir, S3Options.from_env())
        self.model = model.eval().to(self.device)
        self.contract = contract
        self.class_ids = np.asarray(contract.class_anatomy_ids, dtype=np.int64)
        self.crop_size = contract.crop_config.size

    def info(self) -> dict[str, Any]:
        return {
            "model_version": self.contract.version_id,
            "device": str(self.device),
            "crop_size": self.crop_size,
            "classes": int(self.class_ids.size),
            "embedding_dim": int(self.contract.encoder_config.embedding_dim),
        }

    def forward(self, crops: np.ndarray) -> dict[str, np.ndarray]:
        """``crops`` float32 ``(N, S, S)`` in [0, 1] → ``embeddings`` ``(N, D)`` (L2-normalised) and
        ``probabilities`` ``(N, C)`` over :attr:`class_ids`."""

        crops = np.asarray(crops)
        if crops.ndim != 3 or crops.shape[1:] != (self.crop_size, self.crop_size):
            raise ValueError(f"expected crops (N, {self.crop_size}, {self.crop_size}), got {crops.shape}")
        predicted = embed_crops(self.model, crops, device=self.device)
        return {"embeddings": predicted.embeddings, "probabilities": predicted.probabilities}


#: A hit's fields, in order (read once: ``dataclasses.asdict`` would deep-copy every value per hit).
_HIT_FIELDS = tuple(f.name for f in fields(RegionHit))


def hit_to_dict(hit: RegionHit) -> dict[str, Any]:
    data = {name: getattr(hit, name) for name in _HIT_FIELDS}
    data["box"] = [float(v) for v in hit.box]
    return data


@dataclass(frozen=True)
class SearchFilters:
    """What a search keeps besides the model's own rows: one region (``anatomy`` id), one view, all
    but one patient (``exclude_patient_hash``, a salted hash), and at most one hit per study
    (``group_by="study"``; see :data:`indexing.region_index.GROUP_FIELDS`)."""

    anatomy: int | None = None
    view: str | None = None
    exclude_patient_hash: str | None = None
    group_by: str | None = None


@dataclass(frozen=True)
class IndexCopy:
    """A copy of the rows a search replica holds in memory for a milvus-lite file
    (:meth:`SearchRuntime.resident_copy`), searched in another process — a ``fused`` ingress
    replica — with the same checks, filters and answers as :meth:`SearchRuntime.search`.
    ``token`` names the copy (collection and version): a replica re-sends it only when it changes."""

    token: str
    collection: str
    display_uri: str
    model_version: str
    rows: ResidentCollection

    def search(self, vector: Sequence[float], k: int, filters: SearchFilters = SearchFilters()) -> list[dict[str, Any]]:
        hits = search_resident(
            lambda: self.rows,
            self.display_uri,
            self.collection,
            np.asarray(vector, dtype=np.float32),
            k,
            filters.group_by,
            anatomy=filters.anatomy,
            view=filters.view,
            exclude_patient_hash=filters.exclude_patient_hash,
            model_version=self.model_version,
        )
        return [hit_to_dict(h) for h in hits[0]]


class SearchRuntime:
    """The index connection of one process (a milvus-lite file may have only one)."""

    def __init__(
        self,
        milvus_uri: str,
        collection: str,
        model_version: str,
        *,
        consistency_level: str = "Bounded",
        search_ef: int = 64,
        timeout_s: float | None = None,
        connect_attempts: int = 4,
    ):
        # timeout_s: the deadline of every Milvus RPC (a hung server must not hold a replica
        # thread), and of connecting when given
        self.index = RegionIndex(
            milvus_uri,
            consistency_level=consistency_level,
            search_ef=search_ef,
            timeout=timeout_s,
            connect_timeout=timeout_s or 10.0,
            connect_attempts=connect_attempts,
        )
        self.alias = collection
        self.model_version = model_version
        self.collection = collection
        self._locations_open = False
        self._pacs_connected: bool | None = None  # learnt with _locations_open, from the same row
        self.follow_own_collection()

    def follow_own_collection(self) -> None:
        """Search ``<alias>__<model version>`` — what ``regionmir index`` built for this model — once
        the alias points at it (the index moves the alias only when a build is complete and
        verified), and keep searching it when a later index moves the alias to another model: a
        running service's answers never change under it. Until then, the alias (rows filtered by
        this model's version, as always)."""
        own = model_collection_name(self.alias, self.model_version)
        if self.collection == own:
            return
        try:
            target = self.index.alias_target(self.alias)
        except RegionIndexError:  # the alias is a plain collection (a hand-made index): keep it
            return
        if target == own:
            self.collection = own
            self._locations_open = False  # checked again on the collection now searched
            self._pacs_connected = None
            log.info(
                "search: collection %s of the served model (alias %s is left to `regionmir index`)", own, self.alias
            )

    def search(self, vector: Sequence[float], k: int, filters: SearchFilters = SearchFilters()) -> list[dict[str, Any]]:
        hits = self.index.search(
            self.collection,
            np.asarray(vector, dtype=np.float32),
            k=k,
            anatomy=filters.anatomy,
            view=filters.view,
            exclude_patient_hash=filters.exclude_patient_hash,
            group_by=filters.group_by,
            model_version=self.model_version,
        )
        return [hit_to_dict(h) for h in hits[0]]

    def resident_rows(self) -> ResidentCollection | None:
        """The rows of the searched collection this process holds in memory (read from the file
        on first use): for a milvus-lite file, once the collection exists; ``None`` for a Milvus
        server (it searches itself) or while there is no collection yet."""
        if not self.index.resident_search:
            return None
        try:
            return self.index.resident(self.collection)
        except RegionIndexError:  # no collection yet: the index job has not built it
            return None

    def get(self, keys: Sequence[str]) -> dict[str, dict[str, Any]]:
        """Rows by primary key (``key`` → row without the vector); unknown or malformed keys are left out."""
        keys = [k for k in keys if isinstance(k, str) and KEY_RE.fullmatch(k)]
        if not keys:
            return {}
        return {key: hit_to_dict(hit) for key, hit in self.index.get(self.collection, keys).items()}

    def count_for_model(self) -> int:
        return self.index.count(self.collection, model_version=self.model_version)

    def locations_open(self) -> bool | None:
        """Whether this process's ``REGIONMIR_ID_SALT`` opens the film locations the index job sealed
        (checked on one stored row; ``None`` while there is none). A service with another salt
        than the index job's could search but never show a film: it is not ready. The same row
        says whether the index is PACS-connected (:meth:`pacs_connected`)."""
        if self._locations_open:
            return True
        stored = self.index.stored_locations(self.collection, model_version=self.model_version)
        if not stored:
            return None
        try:
            location = open_location(*stored[0])
        except SealedLocationError:
            return False
        self._pacs_connected = is_dicomweb(location)
        self._locations_open = True
        return True

    def pacs_connected(self) -> bool | None:
        """Whether the index's films are PACS instances (``dicomweb+`` locations: its rows name
        SOP Instance UIDs), read from the row :meth:`locations_open` opened; ``None`` until then.
        Such an index is served only with an API key (``serving/README.md``, "PACS")."""
        return self._pacs_connected if self._locations_open else None

    def status(self) -> dict[str, Any]:
        """``rows`` in the collection, ``model_rows`` of the served model version, whether the salt
        opens the stored film locations and whether they are PACS instances; raises when unreachable."""
        self.follow_own_collection()  # an index built after start-up is picked up by the next readiness check
        return {
            "collection": self.collection,
            "alias": self.alias,
            "rows": self.index.count(self.collection),
            "model_rows": self.count_for_model(),
            "model_version": self.model_version,
            "locations_open": self.locations_open(),
            "pacs_connected": self.pacs_connected(),
            "uri": self.index.display_uri,
        }

    def close(self) -> None:
        self.index.close()


def monotonic_ms(start: float) -> float:
    return round((time.perf_counter() - start) * 1000.0, 2)
