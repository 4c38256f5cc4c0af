"""The settings of the index jobs, typed, each default written once: :class:`IndexJob` for
``regionmir index`` (:func:`indexing.build.index_data`) and :class:`EvaluationJob` for ``regionmir
evaluate`` (:func:`indexing.evaluate.evaluate`). The commands build them from their flags (whose
defaults are read from here); code builds them directly and derives variants with
:func:`dataclasses.replace`. Storage credentials are not settings: they are passed beside the job.
"""

from __future__ import annotations

from dataclasses import dataclass

#: The alias the service and ``evaluate`` query; a build moves it to the collection it completed.
DEFAULT_ALIAS = "regions"


@dataclass(frozen=True)
class IndexJob:
    """Embed every ROI of ``data``'s ``split`` with ``model`` and write them to ``milvus``."""

    data: str  # Chest ImaGenome root or manifest, local or s3://, or a dicomweb+http(s):// PACS source
    model: str  # model directory (a finetune --out, or its best/)
    milvus: str  # PATH.db (milvus-lite) or http(s)://host:port
    collection: str = DEFAULT_ALIAS  # the alias the service queries
    labels: str | None = None  # a DICOMweb source's boxes: manifest or scene graphs keyed by SOP Instance UID
    split: str = "train"  # train | valid | test | all (train: the database the paper retrieves from)
    gpu: bool = False  # one GPU per encoder actor
    encoders: int = 1  # encoder actors
    upserters: int = 2  # actors upserting into a Milvus server (0, or a milvus-lite file: this driver writes)
    index_type: str = "AUTO"  # AUTO (by backend and size) | HNSW | FLAT | IVF_FLAT
    batch_size: int = 256  # regions per encoder batch; the driver's upserts take what has arrived, up to this many
    address: str | None = None  # Ray cluster (default: RAY_ADDRESS or a local Ray)
    progress_every_s: float = 10.0  # seconds between progress lines
    max_bad_fraction: float = 0.05  # stop (alias untouched) when more films than this cannot be read
    keep_missing: bool = False  # keep (and report) rows of films no longer in the data
    allow_mass_removal: bool = False  # remove them even when over MAX_REMOVED_FRACTION of a split's rows

    def __post_init__(self) -> None:
        if isinstance(self.upserters, bool) or not isinstance(self.upserters, int) or self.upserters < 0:
            raise ValueError(f"IndexJob.upserters must be an int >= 0, got {self.upserters!r}")


@dataclass(frozen=True)
class EvaluationJob:
    """Query ``collection`` with the ``query_split`` ROIs embedded by ``model``; write the report to ``report_dir``.

    ``exclude_same_patient``: leave the query's own patient out of its ranking and of its R
    (other films of the same person are not what a region search is for, and would flatter it).
    ``localize_films``: how many query films to localise every region of, from the film alone,
    as anatomy-only queries are (0: skip); their mean IoU is ``localization_miou``.
    ``embed``: where the queries are embedded — ``ray`` (Ray Data), ``local`` (this process) or
    ``auto`` (this process for a few dozen films, see :data:`~indexing.roi_embedding.IN_PROCESS_MAX_FILMS`).
    """

    data: str
    model: str
    milvus: str
    report_dir: str  # metrics.json, report.md, run.tsv, qrels.tsv and the pictures; local or s3://
    collection: str = DEFAULT_ALIAS
    query_split: str = "test"
    database_split: str | None = "train"  # None: every indexed split
    k: int = 10  # ranked list length (at least the largest reported cut-off, 10)
    examples: int = 8  # queries drawn in retrieval_examples.png
    address: str | None = None
    max_bad_fraction: float = 0.05
    localize_films: int = 10
    embed: str = "auto"  # auto | ray | local
    exclude_same_patient: bool = True
