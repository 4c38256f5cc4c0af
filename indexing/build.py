"""``regionmir index``: embed every ROI of a data set and write it to Milvus, then move the alias.

* Ray Data batch inference (:mod:`indexing.roi_embedding`): films decoded and cropped in Ray
  tasks, an actor pool of encoders (GPU when ``--gpu``);
* into a Milvus server the Ray Data workers upsert (:mod:`indexing.row_upserter`, ``--upserters``)
  and this driver reads back one small accounting row per region (key, film, anatomy, skip
  reason); into a milvus-lite file (or with ``--upserters 0``) this driver is the one writer
  (milvus-lite admits one process per file);
* **zero-downtime rebuild**: rows go into a build collection named after the alias and the model
  version (``<alias>__<version>``); only when it is complete, flushed and its row count verified
  does the alias (what the service and ``evaluate`` query) move to it. A crashed build leaves the
  alias on the old collection; a re-run upserts into the same build collection (keys are derived
  from image, region and model version), so it completes without duplicates;
* **reconciled**: a re-index of data that changed leaves no row of a film that left it — rows of the
  indexed splits that this run did not write are deleted before the count is verified
  (``--keep-missing`` keeps them and only reports them; more than 10 % of a split stops the job
  unless ``--allow-mass-removal``; a split that lists no film is left alone). Rows of films that
  are still listed but could not be read this time are kept (counted in ``films_skipped``).
"""

from __future__ import annotations

import logging
import os
import queue
import sys
import threading
import time
from collections.abc import Callable, Sequence

from regionmir.anatomy_atlas import AnatomyAtlas, AtlasError
from regionmir.bad_films import BadFilms
from regionmir.command_help import command_parser
from regionmir.console import configure_command_logging
from regionmir.dataset import films_by_split
from regionmir.dicomweb import DicomWebSource, is_dicomweb
from regionmir.errors import DatasetError, RegionMIRError
from regionmir.identifiers import uses_default_salt
from regionmir.model_contract import read_contract
from regionmir.region_record import ImageRecord
from regionmir.sealed_location import seal_location
from regionmir.storage import S3Options

from .index_rows import region_rows
from .index_schema import model_collection_name
from .jobs import IndexJob
from .region_index import TOKEN_ENV, RegionIndex
from .row_upserter import RegionUpserter, upserts_from_workers

log = logging.getLogger(__name__)

#: The build collection for this alias and model (see :func:`model_collection_name`).
build_collection_name = model_collection_name


class _WriteTally:
    """What a build wrote so far: the keys, how many rows, and when the first batch was written;
    logs a progress line every ``progress_every_s``."""

    def __init__(self, progress_every_s: float):
        self.progress_every_s = progress_every_s
        self.keys: set[str] = set()
        self.written = 0
        self.started = self.last_print = time.perf_counter()
        self.first_batch_at: float | None = None
        self.first_batch_rows = 0

    def add(self, keys: Sequence[str]) -> None:
        """Count one batch of written rows, by key."""
        self.keys.update(keys)
        self.written += len(keys)
        if self.first_batch_at is None:
            self.first_batch_at, self.first_batch_rows = time.perf_counter(), self.written
        if time.perf_counter() - self.last_print > self.progress_every_s:
            elapsed = time.perf_counter() - self.started
            log.info(f"{self.written} regions written ({self.written / elapsed:.0f}/s)")
            self.last_print = time.perf_counter()


class _BackgroundWriter(_WriteTally):
    """The one writer of a build into a milvus-lite file: turns batches into rows and upserts them
    on a background thread, while the driver's thread pulls the next batch from Ray Data.

    At most ``depth`` batches wait for it; those waiting when it is free again go into one upsert
    (up to ``max_rows`` rows: milvus-lite's per-call cost is paid less often). It tallies what it
    wrote (:class:`_WriteTally`). The first error (e.g. Milvus refusing an upsert) stops it and is
    raised again, the same exception, in the driver's thread by the next :meth:`put` or by
    :meth:`close`.
    """

    def __init__(
        self,
        index: RegionIndex,
        target: str,
        model_version: str,
        progress_every_s: float,
        *,
        depth: int = 8,
        max_rows: int = 4096,
    ):
        super().__init__(progress_every_s)
        self.index, self.target, self.model_version = index, target, model_version
        self.max_rows = max_rows
        self.error: BaseException | None = None
        self._stop = False
        self._queue: queue.Queue[dict | None] = queue.Queue(maxsize=depth)
        self._thread = threading.Thread(target=self._run, name="regionmir-index-writer", daemon=True)
        self._thread.start()

    def put(self, batch: dict) -> None:
        """Hand one batch (placeholder rows already dropped) to the writer; waits while ``depth`` do."""
        self._raise()
        self._queue.put(batch)

    def close(self) -> None:
        """Wait until every batch handed over is written; raise the writer's error, if any."""
        self._queue.put(None)
        self._thread.join()
        self._raise()

    def abandon(self) -> None:
        """Stop without writing what still waits (the build failed); returns once the writer is idle."""
        if self._thread.is_alive():
            self._stop = True
            self._queue.put(None)  # there is room soon: the writer drains without writing
            self._thread.join()

    def _raise(self) -> None:
        if self.error is not None:
            raise self.error

    def _run(self) -> None:
        done = False
        while not done:
            batches = [self._queue.get()]
            # what else already waits goes into the same upsert: fewer, larger calls when it lags
            while batches[-1] is not None and sum(len(b["anatomy_id"]) for b in batches) < self.max_rows:
                try:
                    batches.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            if batches[-1] is None:
                done = True
                batches.pop()
            if not batches or self._stop or self.error is not None:
                continue  # drained, so a waiting put() returns and raises
            try:
                rows = [row for batch in batches for row in region_rows(batch, self.model_version)]
                self.index.upsert(self.target, rows)
            except BaseException as exc:  # raised in the driver's thread
                self.error = exc
                continue
            self.add([row.key for row in rows])


def index_data(job: IndexJob, s3: S3Options | None = None) -> dict:
    """Run ``job``: embed its films' regions into a build collection, reconcile, verify, move the alias.
    Returns the summary the command prints."""
    from cluster.ray_runtime import start_ray

    started = time.perf_counter()
    s3 = s3 or S3Options.from_env()
    model_dir, contract = read_contract(job.model, s3)
    if contract.stage != "finetune":
        log.info(
            f"note: {model_dir} is a {contract.stage} model; its embedding layer was not trained "
            "(index a fine-tuned model for retrieval)",
        )
    splits = ("train", "valid", "test") if job.split == "all" else (job.split,)
    records, report = films_by_split(job.data, s3, splits, labels=job.labels)
    films = [film for s in splits for film in records[s]]
    pacs = is_dicomweb(job.data)
    if not films:
        raise DatasetError(job.data, "no instance matched the search" if pacs else f"no films in split {job.split!r}")
    unlabelled = sum(1 for film in films if not film.regions) if pacs else 0
    atlas_anatomies: set[int] = set()
    if unlabelled:  # a PACS film without labels: its boxes come from the model's atlas and classifier
        try:
            atlas_anatomies = set(AnatomyAtlas.load(model_dir, s3).entries)
        except AtlasError as exc:
            raise DatasetError(
                job.model,
                f"{unlabelled} film(s) have no boxes (no --labels entry) and the model has no atlas.json "
                f"to find them ({exc.message}); index a fine-tuned model directory, or give --labels",
            ) from None
    if report.total_issues:
        log.info("label scan:\n" + report.summary())
    if uses_default_salt():
        log.warning(
            "REGIONMIR_ID_SALT is not set: patient hashes and sealed film locations use the "
            "public default salt (a demo only: a production service refuses it)",
        )
    index = RegionIndex(job.milvus)
    try:
        target = build_collection_name(job.collection, contract.version_id)
        dim = contract.encoder_config.embedding_dim
        class_ids = set(contract.class_anatomy_ids)
        localisable = len(class_ids & atlas_anatomies)

        def expected(film: ImageRecord) -> int:
            return sum(1 for r in film.regions if r.anatomy_id in class_ids) if film.regions else localisable

        expected_rows = sum(expected(film) for film in films)
        # a re-run resumes it; AUTO: exact (FLAT) up to 1M rows, HNSW beyond (RegionIndex.default_index_type)
        index.create_collection(target, dim, index_type=job.index_type, exist_ok=True, expected_rows=expected_rows)
        kept: set[str] = set()  # rows of films a PACS ingest finds already indexed: not embedded again
        to_index = films
        keep_missing = job.keep_missing
        if pacs:
            to_index, kept = not_yet_indexed(index, target, films, expected)
            log.info(f"{len(films) - len(to_index)} of {len(films)} films already indexed in {target}")
            if DicomWebSource.parse(job.data).narrowed and not keep_missing:
                # an instance this narrower search does not list may well still be in the PACS
                log.info("the search names dates, studies or modalities: rows of instances it does not list are kept")
                keep_missing = True
        writer = None
        embed_started = time.perf_counter()
        skipped = BadFilms(job.data, max(1, len(to_index)), job.max_bad_fraction)
        if to_index:
            start_ray(job.address)
            writer = _embed_into(index, target, job, contract, model_dir, to_index, s3, skipped, pacs)
        written, keys = (writer.written, writer.keys | kept) if writer else (0, kept)
        first_batch_at, first_batch_rows = (writer.first_batch_at, writer.first_batch_rows) if writer else (None, 0)
        embed_seconds = time.perf_counter() - embed_started
        index.flush(target)
        listed = [s for s in splits if records[s]]  # a split that lists no film is left as it is
        missing = reconcile(
            index,
            target,
            listed,
            keys,
            skipped.image_ids,
            keep=keep_missing,
            allow_mass_removal=job.allow_mass_removal,
        )
        index.verify(target, len(keys) + missing["kept_missing"] + missing["kept_unreadable"], splits=listed)
        index.wait_until_indexed(target)  # a server answers from a temporary index until its build ends
        previous = index.point_alias(job.collection, target)
        expected_regions = expected_rows
        summary = {
            "alias": job.collection,
            "collection": target,
            "previous_collection": previous,
            "milvus": job.milvus,
            "model_version": contract.version_id,
            "split": job.split,
            "films": len(films),
            **({"films_already_indexed": len(films) - len(to_index), "films_localised": unlabelled} if pacs else {}),
            "rows": index.count(target),
            "rows_written": written,
            "upserts_from": "none"
            if writer is None
            else ("driver" if isinstance(writer, _BackgroundWriter) else "workers"),
            "regions_expected": expected_regions,
            "regions_skipped": expected_regions - len(keys),
            "films_skipped": skipped.count,
            "films_skipped_by_reason": skipped.by_reason,
            "rows_of_missing_films_removed": missing["removed"],
            "rows_of_missing_films_kept": missing["kept_missing"],
            "rows_of_unreadable_films_kept": missing["kept_unreadable"],
            "rows_per_s": round(written / max(1e-9, embed_seconds), 1),
            # after the first batch arrived: the pipeline's steady rate, without actor start-up
            "rows_per_s_steady": round(
                (written - first_batch_rows)
                / max(1e-9, embed_started + embed_seconds - (first_batch_at or embed_started)),
                1,
            ),
            "seconds": round(time.perf_counter() - started, 1),
        }
    finally:
        index.close()  # also when the build fails: milvus-lite admits one open client per file
    log.info(
        f"done: {summary['rows']} rows in {target} ({summary['rows_per_s']} rows/s), "
        f"{summary['films_skipped']} films and {summary['regions_skipped']} regions skipped; "
        f"alias {job.collection} → {target}" + (f" (was {previous})" if previous and previous != target else ""),
    )
    return summary


def _embed_into(
    index: RegionIndex,
    target: str,
    job: IndexJob,
    contract,
    model_dir: str,
    films: list[ImageRecord],
    s3: S3Options,
    skipped: BadFilms,
    localise: bool,
) -> _WriteTally:
    """Embed ``films``' regions through Ray Data into ``target``; the tally of what was written.

    Into a server the Ray Data workers upsert (:mod:`indexing.row_upserter`) and this driver reads
    back one accounting row per region; into a milvus-lite file this driver is the one writer."""
    from .roi_embedding import embedding_dataset

    dataset = embedding_dataset(
        films,
        model_dir,
        contract.crop_config,
        contract.class_anatomy_ids,
        s3,
        gpu=job.gpu,
        encoders=job.encoders,
        batch_size=job.batch_size,
        keep_crops=False,  # the index stores no pixels
        localise_unlabelled=localise,
    )
    from_workers = upserts_from_workers(job.milvus, job.upserters)
    log.info(
        f"{len(films)} films ({job.split}) → {target} (alias {job.collection}) at {job.milvus}, "
        f"model {contract.version_id}; "
        + (f"{job.upserters} upserting actors" if from_workers else "upserts from this process"),
    )
    if from_workers:
        return _upsert_from_workers(dataset, target, job, contract.version_id, skipped)
    # decode/crop and encode run in Ray; this thread pulls their batches while the writer upserts
    writer = _BackgroundWriter(index, target, contract.version_id, job.progress_every_s, max_rows=job.batch_size)
    try:
        # the encoder's blocks as they come (no re-batching here: the writer merges what waits)
        for batch in dataset.iter_batches(batch_size=None, batch_format="numpy"):
            batch = skipped.filter(batch)
            if len(batch["anatomy_id"]):
                writer.put(batch)
        writer.close()
    finally:
        writer.abandon()
    return writer


def _upsert_from_workers(dataset, target: str, job: IndexJob, model_version: str, skipped: BadFilms) -> _WriteTally:
    """An actor pool of :class:`~indexing.row_upserter.RegionUpserter` after the encoders writes the
    rows; this driver tallies their keys and counts skipped films from the accounting rows.

    An upserter's error (Milvus unreachable from the workers, a refused upsert) reaches this driver
    wrapped by Ray Data; the :class:`~regionmir.errors.RegionMIRError` inside is raised again here,
    so the command ends with its one clear line as when this process writes."""
    import ray

    accounting = dataset.map_batches(
        RegionUpserter,
        fn_constructor_kwargs={
            "milvus": job.milvus,
            "collection": target,
            "model_version": model_version,
            "token": os.environ.get(TOKEN_ENV) or None,  # to these actors only, not into the job's runtime_env
        },
        batch_size=None,  # the encoder's blocks as they come
        compute=ray.data.ActorPoolStrategy(size=job.upserters),
        # mostly waiting on the server, so a quarter of a CPU: never on a head node that declares
        # none (the Kubernetes jobs' head), while the cropper and encoders keep the cores
        num_cpus=0.25,
    )
    # an upserter's RegionMIRError then travels as itself (the Ray error's cause), not as text
    # inside Ray Data's UserCodeException (this dataset's own context: no other dataset changes)
    accounting.context.raise_original_map_exception = True
    tally = _WriteTally(job.progress_every_s)
    try:
        for batch in accounting.iter_batches(batch_size=None, batch_format="numpy"):
            batch = skipped.filter(batch)
            if len(batch["key"]):
                tally.add(batch["key"].tolist())
    except ray.exceptions.RayError as exc:
        cause = _region_error(exc)
        if cause is None:
            raise
        raise cause from None
    return tally


def _region_error(exc: BaseException) -> RegionMIRError | None:
    """The :class:`RegionMIRError` a Ray error carries as its cause (or its cause's), if any."""
    seen: set[int] = set()
    pending: list[BaseException | None] = [exc]
    while pending:
        current = pending.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, RegionMIRError) and not _is_ray_wrapper(current):
            return current
        pending += [getattr(current, "cause", None), current.__cause__, current.__context__]
    return None


def _is_ray_wrapper(exc: BaseException) -> bool:
    """Ray's task error class also derives from the user's exception class: not the error itself."""
    import ray

    return isinstance(exc, ray.exceptions.RayError)


def not_yet_indexed(
    index: RegionIndex, target: str, films: Sequence[ImageRecord], expected: Callable[[ImageRecord], int]
) -> tuple[list[ImageRecord], set[str]]:
    """An incremental ingest: the films of ``films`` that ``target`` does not hold completely yet,
    and the keys of the rows of those it does (still listed, so kept).

    A film is complete when it has ``expected(film)`` rows (its labelled regions of the model's
    vocabulary, or every region the atlas can place for a localised film), all stored at the film's
    present location (the PACS root or the instance's study/series may have changed) and with the
    present ``box_source`` (labels given since it was localised replace the localiser's boxes). Boxes
    changed in a labels file are not compared: index into a new collection to take them."""
    wanted = {film.image_id: film for film in films}
    rows: dict[str, list[tuple[str, str, str]]] = {}
    for key, image_id, sealed, box_source in index.scan(target, ("key", "image_id", "image_uri", "box_source")):
        if image_id in wanted:
            rows.setdefault(image_id, []).append((key, sealed, box_source))
    kept: set[str] = set()
    to_index = []
    for film in films:
        have = rows.get(film.image_id, [])
        location = seal_location(film.image_uri, film.image_id) if have else ""
        source = "label" if film.regions else "localiser"
        if (
            have
            and len(have) >= expected(film)
            and all(sealed == location and box_source == source for _, sealed, box_source in have)
        ):
            kept.update(key for key, _, _ in have)
        else:
            to_index.append(film)
    return to_index, kept


#: A re-index removes at most this share of a split's rows unless told ``--allow-mass-removal``: a
#: truncated listing must not empty the collection a service may be answering from.
MAX_REMOVED_FRACTION = 0.10


def reconcile(
    index: RegionIndex,
    target: str,
    splits: Sequence[str],
    written: set[str],
    unreadable: set[str],
    *,
    keep: bool = False,
    allow_mass_removal: bool = False,
) -> dict[str, int]:
    """Rows of ``splits`` in ``target`` that this run did not write: a re-index after films (or
    regions) left the data. Deleted unless ``keep``; rows of films that are still listed but could
    not be read this time (``unreadable`` image ids) stay. Pass only splits that listed films.

    Nothing is deleted when a split would lose more than :data:`MAX_REMOVED_FRACTION` of its rows
    (``DatasetError``) unless ``allow_mass_removal``. Returns ``{"removed", "kept_missing",
    "kept_unreadable"}`` row counts."""
    stale: dict[str, list[str]] = {}
    kept_missing = kept_unreadable = 0
    for split in splits:
        stale[split], total = [], 0
        for key, image_id in index.scan(target, ("key", "image_id"), split=split):  # streamed
            total += 1
            if key in written:
                continue
            if image_id in unreadable:
                kept_unreadable += 1
            elif keep:
                kept_missing += 1
            else:
                stale[split].append(key)
        if not allow_mass_removal and len(stale[split]) > MAX_REMOVED_FRACTION * total:
            raise DatasetError(
                target,
                f"re-indexing would remove {len(stale[split])} of the {total} {split} rows "
                f"(over {MAX_REMOVED_FRACTION:.0%}) because their films are no longer "
                "listed: check --data (a truncated listing?); nothing was removed or "
                "switched over. --allow-mass-removal removes them, --keep-missing keeps them",
            )
    removed = [key for keys in stale.values() for key in keys]
    if removed:
        log.info(f"removing {len(removed)} rows of films or regions no longer in the data from {target}")
        index.delete_keys(target, removed)
    if kept_missing:
        log.info(
            f"note: {kept_missing} rows in {target} belong to films or regions no longer in the data; "
            "kept (--keep-missing); run without it to remove them",
        )
    return {"removed": len(removed), "kept_missing": kept_missing, "kept_unreadable": kept_unreadable}


def index_main(argv: Sequence[str]) -> int:
    import json

    parser = command_parser(prog="regionmir index", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--data",
        required=True,
        help="Chest ImaGenome root or manifest, local or s3://; or a PACS: "
        "dicomweb+http(s)://HOST/dicom-web[?modality=CR,DX&study_date=FROM-TO&study_uid=UID] "
        "(incremental: a re-run indexes only instances not yet indexed)",
    )
    parser.add_argument(
        "--labels",
        help="with a dicomweb+ --data: the boxes, a manifest or scene graphs keyed by SOP Instance UID "
        "(instances without labels get boxes from the model's anatomy localiser)",
    )
    parser.add_argument("--model", required=True, help="model directory (a finetune --out, or its best/)")
    parser.add_argument(
        "--milvus",
        required=True,
        help="PATH.db (milvus-lite, embedded) or http(s)://host:port (a Milvus server; token from MILVUS_TOKEN)",
    )
    parser.add_argument("--collection", default=IndexJob.collection, help="the alias the service queries")
    parser.add_argument(
        "--split",
        default=IndexJob.split,
        choices=("train", "valid", "test", "all"),
        help=f"which films to index (default {IndexJob.split}: the database the paper retrieves from)",
    )
    parser.add_argument(
        "--index-type",
        default=IndexJob.index_type,
        choices=("AUTO", "HNSW", "FLAT", "IVF_FLAT"),
        help="vector index of a new build collection (default AUTO: FLAT — exact — for a milvus-lite file "
        "and for up to 1M rows on a server, HNSW beyond)",
    )
    parser.add_argument("--gpu", action="store_true", help="one GPU per encoder actor")
    parser.add_argument("--encoders", type=int, default=IndexJob.encoders, help="encoder actors")
    parser.add_argument(
        "--upserters",
        type=int,
        default=IndexJob.upserters,
        help=f"with a Milvus server: actors that upsert the rows from the Ray workers, which must reach the "
        f"server's URI (default {IndexJob.upserters}; 0: this process writes; a milvus-lite file is written "
        "by this process alone)",
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        default=IndexJob.batch_size,
        help=f"regions per encoder batch, and at most per upsert when this process writes (the upserting "
        f"actors take the encoder's blocks as they come) (default {IndexJob.batch_size}; larger on a GPU)",
    )
    parser.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS or a local Ray)")
    parser.add_argument(
        "--max-bad-fraction",
        type=float,
        default=IndexJob.max_bad_fraction,
        help="stop (leaving the alias where it was) when more films than this cannot be read",
    )
    parser.add_argument(
        "--keep-missing",
        action="store_true",
        help="keep (and report) rows of films no longer in the data instead of removing them",
    )
    parser.add_argument(
        "--allow-mass-removal",
        action="store_true",
        help=f"remove them even when over {MAX_REMOVED_FRACTION:.0%}% of a split's rows would go "
        "(otherwise the job stops, removing nothing)",
    )
    args = parser.parse_args(list(argv))
    configure_command_logging("index", args)
    if args.batch_size < 1:
        parser.error(f"--batch-size must be at least 1, got {args.batch_size}")
    if args.upserters < 0:
        parser.error(f"--upserters must be 0 or more, got {args.upserters}")
    try:
        summary = index_data(
            IndexJob(
                data=args.data,
                model=args.model,
                milvus=args.milvus,
                collection=args.collection,
                labels=args.labels,
                split=args.split,
                gpu=args.gpu,
                encoders=args.encoders,
                upserters=args.upserters,
                index_type=args.index_type,
                batch_size=args.batch_size,
                address=args.address,
                max_bad_fraction=args.max_bad_fraction,
                keep_missing=args.keep_missing,
                allow_mass_removal=args.allow_mass_removal,
            )
        )
    except RegionMIRError as exc:
        from cluster.ray_runtime import stop_ray

        # Ray first: the workers' last forwarded lines ("skipping film …") must not land after the verdict
        stop_ray()
        print(f"regionmir index: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(summary, indent=1))
    return 0
