"""Read the Chest ImaGenome silver data set (scene graphs + splits) into :class:`ImageRecord` s.

Layout read, locally or under ``s3://`` alike (``root`` may be the folder holding
``silver_dataset``, ``silver_dataset`` itself, or a folder of scene graph files)::

    {root}/silver_dataset/scene_graph/{dicom_id}_SceneGraph.json   (or scene_graph/scene_graph/…,
                                                                    as unzipping scene_graph.zip gives)
    {root}/silver_dataset/splits/{train,valid,test}.csv            subject_id, study_id, dicom_id, path
    {root}/silver_dataset/splits/images_to_avoid.csv               the gold-set images (dropped, counted)

Without ``splits/`` every scene graph in the folder is read and its split is a deterministic hash
of the patient id (80/10/10, see :func:`regionmir.region_record.hash_split`), so one patient never
lands in two splits.

**Images.** The CSV ``path`` is the MIMIC-CXR DICOM path (``files/p10/p10000980/s5…/<id>.dcm``).
The image root is ``image_root`` when given, else the first of ``{root}/images``, ``{root}`` and,
when ``root`` is the ``silver_dataset`` folder, ``{parent}/images``, ``{parent}``. Inside a root
the path is tried as written, without its leading ``files/``, and flat (``{dicom_id}``); each with
the extension as written, then ``.jpg``, ``.png``, ``.dcm``. The first combination that exists for
one of the first :attr:`probe_rows` images is applied to *all* images: no per-file ``stat`` (242k
HEAD requests on S3). Images probed and not found are counted ``missing_image``; later missing
files surface when the decode stage reads them.

**Boxes** are the ``original_x1..y2`` coordinates, pixels of the stored full-resolution image.
Negative coordinates are clamped to 0 (``box_clamped``), zero-area/inverted/non-numeric boxes and
unknown ``bbox_name`` s are skipped, and each of the 36 regions an image lacks is counted
``region_missing`` (detail: the region). Boxes past the right/bottom edge need the image size:
the decode stage calls :func:`clamp_to_image`. Everything lands in :attr:`report`; nothing is
printed.
"""

from __future__ import annotations

import csv
import io
import json
import posixpath
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from . import storage
from .anatomy import ANATOMY_NAMES, NUM_ANATOMIES, anatomy_id
from .boxes import Box
from .errors import DatasetError, StorageError, UnknownAnatomyError
from .identifiers import hash_identifier
from .region_record import (
    SPLITS,
    ImageRecord,
    RegionRecord,
    clamp_to_image,
    hash_split,
    normalise_view,
    sanitize_unsized_box,
)
from .scan_report import ScanReport
from .storage import S3Options

__all__ = ["ChestImaGenomeReader", "ImageLayout", "clamp_to_image", "affirmed_findings"]

SCENE_GRAPH_SUFFIX = "_SceneGraph.json"
#: Extensions tried after the one the CSV writes (MIMIC-CXR-JPG, our phantoms, DICOM).
PROBE_EXTENSIONS: tuple[str, ...] = (".jpg", ".png", ".dcm")
_COORDINATES = ("original_x1", "original_y1", "original_x2", "original_y2")


@dataclass(frozen=True)
class ImageLayout:
    """Where images live: a root, a path form and an extension, found once by probing.

    ``form`` is ``"as written"`` (the CSV path), ``"without files/"`` (the CSV path minus its
    leading ``files/``, for an ``image_root`` that already points at ``files``) or ``"flat"``
    (``{dicom_id}`` directly under the root). ``extension`` replaces the path's extension; ``""``
    keeps it.
    """

    root: str
    form: str = "as written"
    extension: str = ""

    def relative_path(self, csv_path: str, dicom_id: str) -> str:
        if self.form == "flat":
            stem, written_ext = dicom_id, posixpath.splitext(csv_path)[1]
        else:
            path = csv_path.lstrip("/")
            if self.form == "without files/" and path.startswith("files/"):
                path = path[len("files/") :]
            stem, written_ext = posixpath.splitext(path)
        return stem + (self.extension or written_ext)

    def uri(self, csv_path: str, dicom_id: str) -> str:
        return storage.join(self.root, self.relative_path(csv_path, dicom_id))

    def describe(self) -> str:
        ext = self.extension or "as written"
        return f"{self.root} (path {self.form}, extension {ext})"


@dataclass
class _Candidate:
    """One image to read: its scene graph and what the split CSV said about it (if anything)."""

    dicom_id: str
    graph_path: str
    split: str | None = None  # None: decided from the scene graph (no split CSVs)
    row: dict[str, str] = field(default_factory=dict)


def mimic_relative_path(subject_id: str, study_id: str, dicom_id: str) -> str:
    """The MIMIC-CXR path of an image: ``files/p10/p10000980/s50985099/<dicom_id>.dcm``."""
    subject, study = str(subject_id).strip(), str(study_id).strip()
    subject = subject[1:] if subject.startswith("p") else subject
    study = study[1:] if study.startswith("s") else study
    return f"files/p{subject[:2]}/p{subject}/s{study}/{dicom_id}.dcm"


def affirmed_findings(attribute_lists: Any) -> set[str]:
    """Finding names affirmed in Chest ImaGenome attribute strings (``category|yes|name``).

    Accepts the release's list of lists (one list per report phrase) or a flat list.
    """
    found: set[str] = set()
    stack = [attribute_lists]
    while stack:
        item = stack.pop()
        if isinstance(item, (list, tuple)):
            stack.extend(item)
        elif isinstance(item, str):
            parts = item.split("|")
            if len(parts) >= 3 and parts[1].strip().lower() == "yes":
                found.add("|".join(parts[2:]).strip())
    return found


class ChestImaGenomeReader:
    """Streams :class:`ImageRecord` s from a Chest ImaGenome copy (local folder or ``s3://`` prefix).

    ``splits`` limits which split CSVs are read; ``skip_images_to_avoid`` drops the gold-set images
    listed in ``images_to_avoid.csv``; ``salt`` overrides the identifier salt (tests). Scene graphs
    are fetched by ``workers`` threads (default 8 for remote storage, where each is one small GET
    waiting on the network, and 1 locally) with at most ``4 * workers`` in flight, so memory stays
    flat. (s3fs's connection pool holds 10 connections, so more threads than that only queue.)
    """

    def __init__(
        self,
        root: str,
        image_root: str | None = None,
        splits: Iterable[str] = SPLITS,
        s3: S3Options | None = None,
        skip_images_to_avoid: bool = True,
        *,
        salt: str | None = None,
        workers: int | None = None,
        probe_rows: int = 5,
    ):
        self.root = _clean_root(root)
        self.s3 = s3
        self.splits = tuple(splits)
        for split in self.splits:
            if split not in SPLITS:
                raise DatasetError(self.root, f"unknown split {split!r}; use {', '.join(SPLITS)}")
        self.skip_images_to_avoid = skip_images_to_avoid
        self.salt = salt
        self.workers = workers if workers is not None else (8 if storage.is_remote(self.root) else 1)
        self.probe_rows = max(1, probe_rows)
        self.image_root = _clean_root(image_root) if image_root else None
        self.report = ScanReport(source=self.root)
        # One filesystem object for all scene graph reads (s3fs keeps one connection pool).
        self._fs = storage.filesystem(self.root, self.s3)[0]
        self._fs_is_s3 = self.root.startswith(("s3://", "s3a://"))
        self._locate()
        self.images_to_avoid, self.images_to_avoid_file = self._load_images_to_avoid()
        self._layout: ImageLayout | None = None
        self._probed_missing: set[str] = set()
        self._probed: list[str] = []

    # -- layout discovery ------------------------------------------------------------------

    def _locate(self) -> None:
        """Find silver_dataset, the scene graph folder and the splits folder; raise if none."""
        if not storage.is_dir(self.root, self.s3):
            raise DatasetError(
                self.root,
                "no such folder or prefix (expected a Chest ImaGenome "
                "copy holding silver_dataset/scene_graph and silver_dataset/splits)",
            )
        silver = storage.join(self.root, "silver_dataset")
        self.root_is_silver = False
        if not storage.is_dir(silver, self.s3):
            silver = self.root
            self.root_is_silver = True
        graphs = storage.join(silver, "scene_graph")
        if storage.is_dir(storage.join(graphs, "scene_graph"), self.s3):
            graphs = storage.join(graphs, "scene_graph")
        elif not storage.is_dir(graphs, self.s3):
            graphs = silver  # root is the scene graph folder itself
        splits_dir = storage.join(silver, "splits")
        self.silver_dir = silver
        self.scene_graph_dir = graphs
        self.splits_dir = splits_dir if storage.is_dir(splits_dir, self.s3) else None
        if self.splits_dir is None:
            if not storage.glob(storage.join(graphs, "*" + SCENE_GRAPH_SUFFIX), self.s3):
                raise DatasetError(
                    self.root,
                    "not a Chest ImaGenome copy: looked for "
                    "silver_dataset/splits/{train,valid,test}.csv and for "
                    f"*{SCENE_GRAPH_SUFFIX} files in {graphs}",
                )
            self.root_is_silver = False
        else:
            for split in self.splits:
                csv_uri = storage.join(self.splits_dir, f"{split}.csv")
                if not storage.exists(csv_uri, self.s3):
                    raise DatasetError(
                        csv_uri,
                        f"split file missing; pass splits= with the splits "
                        f"you have (found {self._split_files_present()})",
                    )

    def _split_files_present(self) -> str:
        names = [
            s for s in SPLITS if self.splits_dir and storage.exists(storage.join(self.splits_dir, f"{s}.csv"), self.s3)
        ]
        return ", ".join(names) or "none"

    def _load_images_to_avoid(self) -> tuple[frozenset[str], str | None]:
        """dicom_ids of ``images_to_avoid.csv`` (in splits/, silver_dataset/ or the root)."""
        places = [d for d in (self.splits_dir, self.silver_dir, self.root) if d]
        for folder in dict.fromkeys(places):
            uri = storage.join(folder, "images_to_avoid.csv")
            if storage.exists(uri, self.s3):
                rows = _read_csv(uri, self.s3, required=("dicom_id",))
                return frozenset(r["dicom_id"].strip() for r in rows if r.get("dicom_id")), uri
        return frozenset(), None

    def _image_roots(self) -> list[str]:
        if self.image_root:
            return [self.image_root]
        roots = [storage.join(self.root, "images"), self.root]
        if self.root_is_silver:
            above = storage.parent(self.root)
            roots += [storage.join(above, "images"), above]
        return roots

    def _layout_groups(self, csv_path: str) -> Iterator[list[ImageLayout]]:
        """Candidate layouts in probe order, grouped so one group differs only by extension."""
        written = posixpath.splitext(csv_path)[1].lower()
        extensions = [""] + [e for e in PROBE_EXTENSIONS if e != written]
        forms = ["as written"] + (["without files/"] if csv_path.lstrip("/").startswith("files/") else [])
        forms.append("flat")
        for root in self._image_roots():
            for form in forms:
                yield [ImageLayout(root, form, ext) for ext in extensions]

    def _which_exist(self, uris: list[str]) -> set[str]:
        """Those of ``uris`` (same folder and stem, different extensions) that exist.

        On S3 one prefix listing (``{folder}/{stem}*``) answers for all extensions at once: a
        missing key otherwise costs a HEAD plus a LIST per extension, whatever the folder size.
        """
        if self._fs_is_s3:
            path = uris[0].split("://", 1)[1]
            folder, name = posixpath.split(path)
            try:
                found = set(self._fs.find(folder, prefix=posixpath.splitext(name)[0]))
            except FileNotFoundError:
                return set()
            except OSError as exc:
                raise StorageError(uris[0], f"cannot list: {exc}") from exc
            return {uri for uri in uris if uri.split("://", 1)[1] in found}
        return {uri for uri in uris if storage.exists(uri, self.s3)}

    def _probe(self, csv_path: str, dicom_id: str) -> ImageLayout | None:
        """Try every layout for one image; fix the first that exists."""
        for group in self._layout_groups(csv_path):
            uris = [layout.uri(csv_path, dicom_id) for layout in group]
            present = self._which_exist(uris)
            for layout, uri in zip(group, uris):
                if uri in present:
                    self._layout = layout
                    return layout
        self._probed_missing.add(dicom_id)
        self._probed.append(dicom_id)
        if len(self._probed) >= self.probe_rows:
            roots = ", ".join(self._image_roots())
            raise DatasetError(
                self.root,
                f"no image found for the first {len(self._probed)} images "
                f"(e.g. {csv_path}) under {roots}, as written, without 'files/' or "
                f"as {{dicom_id}}, with extensions as written, "
                f"{', '.join(PROBE_EXTENSIONS)}; pass image_root=",
            )
        return None

    def image_layout(self) -> ImageLayout:
        """The image layout, probing the first images if it is not known yet."""
        if self._layout is None:
            for candidate in self._candidates(self.splits, ScanReport()):
                graph = None
                if candidate.split is None:  # no split CSV: the path comes from the scene graph
                    graph = _parse_graph(self._fetch_one(candidate.graph_path))
                    if graph is None:
                        continue
                if self._probe(self._csv_path(candidate, graph or {}), candidate.dicom_id):
                    break
        if self._layout is None:
            raise DatasetError(self.root, "no image to probe: the split files list no image")
        return self._layout

    # -- scanning ----------------------------------------------------------------------------

    def iter_images(self, split: str | None = None) -> Iterator[ImageRecord]:
        """Stream the images of ``split`` (default: every split of :attr:`splits`), in CSV order.

        Starts a fresh :attr:`report` for this scan; it is complete once the iterator is exhausted.
        """
        if split is not None and split not in self.splits:
            raise DatasetError(self.root, f"split {split!r} not among those read: {', '.join(self.splits)}")
        wanted = (split,) if split else self.splits
        report = ScanReport(source=self.root)
        self.report = report
        for candidate, payload in self._fetch_all(self._candidates(wanted, report)):
            record = self._image_record(candidate, payload, wanted, report)
            if record is not None:
                report.count("images")
                report.count("regions", len(record.regions))
                yield record

    def _candidates(self, wanted: tuple[str, ...], report: ScanReport) -> Iterator[_Candidate]:
        if self.splits_dir is None:
            for uri in storage.glob(storage.join(self.scene_graph_dir, "*" + SCENE_GRAPH_SUFFIX), self.s3):
                report.count("scene_graphs")
                dicom_id = posixpath.basename(uri)[: -len(SCENE_GRAPH_SUFFIX)]
                if self._avoided(dicom_id, report):
                    continue
                yield _Candidate(dicom_id, uri, None)
            return
        for split in wanted:
            csv_uri = storage.join(self.splits_dir, f"{split}.csv")
            for number, row in enumerate(_read_csv(csv_uri, self.s3, required=("dicom_id",)), start=2):
                report.count("split_rows")
                dicom_id = (row.get("dicom_id") or "").strip()
                if not dicom_id:
                    report.issue("missing_value", f"{split}.csv:{number}", detail="dicom_id")
                    continue
                if self._avoided(dicom_id, report):
                    continue
                graph = storage.join(self.scene_graph_dir, dicom_id + SCENE_GRAPH_SUFFIX)
                yield _Candidate(dicom_id, graph, split, row)

    def _avoided(self, dicom_id: str, report: ScanReport) -> bool:
        if self.skip_images_to_avoid and dicom_id in self.images_to_avoid:
            report.issue("image_to_avoid", dicom_id)
            return True
        return False

    def _fetch_one(self, graph_uri: str) -> bytes | None:
        """The scene graph's bytes, ``None`` when it does not exist; storage failures raise."""
        path = graph_uri.split("://", 1)[1] if storage.is_remote(graph_uri) else graph_uri
        try:
            return self._fs.cat_file(path)  # one GET; fs.open would HEAD first
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StorageError(graph_uri, f"cannot read scene graph: {exc}") from exc

    def _fetch_all(self, candidates: Iterator[_Candidate]) -> Iterator[tuple[_Candidate, bytes | None]]:
        """Fetch scene graphs with a bounded window of threads, yielding in input order."""
        if self.workers <= 1:
            for candidate in candidates:
                yield candidate, self._fetch_one(candidate.graph_path)
            return
        pool = ThreadPoolExecutor(self.workers, thread_name_prefix="scene-graph")
        pending: deque[tuple[_Candidate, Future]] = deque()
        try:
            for candidate in candidates:
                pending.append((candidate, pool.submit(self._fetch_one, candidate.graph_path)))
                if len(pending) >= 4 * self.workers:
                    first, future = pending.popleft()
                    yield first, future.result()
            while pending:
                first, future = pending.popleft()
                yield first, future.result()
        finally:
            # A consumer that stops early must not wait for (or leak) queued downloads.
            pool.shutdown(wait=False, cancel_futures=True)

    def _csv_path(self, candidate: _Candidate, graph: dict[str, Any]) -> str:
        path = (candidate.row.get("path") or "").strip()
        if path:
            return path
        subject = candidate.row.get("subject_id") or graph.get("patient_id") or ""
        study = candidate.row.get("study_id") or graph.get("study_id") or ""
        if str(subject).strip() and str(study).strip():
            return mimic_relative_path(str(subject), str(study), candidate.dicom_id)
        return candidate.dicom_id + ".dcm"

    def _image_uri(self, csv_path: str, dicom_id: str, report: ScanReport) -> str | None:
        if dicom_id in self._probed_missing:
            report.issue("missing_image", dicom_id)
            return None
        layout = self._layout or self._probe(csv_path, dicom_id)
        if layout is None:
            report.issue("missing_image", dicom_id)
            return None
        return layout.uri(csv_path, dicom_id)

    def _image_record(
        self, candidate: _Candidate, payload: bytes | None, wanted: tuple[str, ...], report: ScanReport
    ) -> ImageRecord | None:
        dicom_id = candidate.dicom_id
        if payload is None:
            report.issue("missing_scene_graph", dicom_id)
            return None
        graph = _parse_graph(payload)
        if graph is None:
            report.issue("bad_json", dicom_id)
            return None
        row = candidate.row
        subject = (row.get("subject_id") or "").strip() or str(graph.get("patient_id") or "")
        study = (row.get("study_id") or "").strip() or str(graph.get("study_id") or "")
        split = candidate.split
        if split is None:
            split = hash_split(subject or dicom_id)
            if split not in wanted:
                return None  # a filter, not dirt: not counted
        raw_view = str(graph.get("viewpoint") or row.get("ViewPosition") or "").strip()
        view = normalise_view(raw_view)
        if raw_view and not view:
            report.issue("unknown_view", dicom_id, detail=raw_view)

        regions = self._regions(graph, dicom_id, report)
        if not regions:
            report.issue("image_without_regions", dicom_id)
            return None
        image_uri = self._image_uri(self._csv_path(candidate, graph), dicom_id, report)
        if image_uri is None:
            return None
        patient_hash = hash_identifier(subject, self.salt)
        study_hash = hash_identifier(study, self.salt)
        records = tuple(
            RegionRecord(
                image_uri=image_uri,
                image_id=dicom_id,
                anatomy_id=aid,
                box=box,
                split=split,
                patient_hash=patient_hash,
                study_hash=study_hash,
                view=view,
                attributes=attrs,
            )
            for aid, box, attrs in regions
        )
        return ImageRecord(
            image_uri=image_uri,
            image_id=dicom_id,
            split=split,
            patient_hash=patient_hash,
            study_hash=study_hash,
            view=view,
            regions=records,
        )

    def _regions(
        self, graph: dict[str, Any], dicom_id: str, report: ScanReport
    ) -> list[tuple[int, Box, tuple[str, ...]]]:
        """``(anatomy id, box, findings)`` per usable object, sorted by anatomy id."""
        findings: dict[int, set[str]] = {}
        for entry in graph.get("attributes") or []:
            if isinstance(entry, dict):
                try:
                    aid = anatomy_id(str(entry.get("bbox_name", "")))
                except UnknownAnatomyError:
                    continue  # counted once, through the object of the same name
                findings.setdefault(aid, set()).update(affirmed_findings(entry.get("attributes")))
        seen: set[int] = set()
        regions: dict[int, tuple[int, Box, tuple[str, ...]]] = {}
        for obj in graph.get("objects") or []:
            name = obj.get("bbox_name") if isinstance(obj, dict) else None
            try:
                aid = anatomy_id(str(name))
            except UnknownAnatomyError:
                report.issue("unknown_anatomy", dicom_id, detail=str(name))
                continue
            example = f"{dicom_id}/{ANATOMY_NAMES[aid]}"
            if aid in seen:
                report.issue("duplicate_region", example)
                continue
            seen.add(aid)
            try:
                box = Box(*(float(obj[key]) for key in _COORDINATES))
            except (KeyError, TypeError, ValueError):
                report.issue("bad_box", example)
                continue
            box = sanitize_unsized_box(box, report, example)
            if box is not None:
                regions[aid] = (aid, box, tuple(sorted(findings.get(aid, ()))))
        for aid in range(NUM_ANATOMIES):
            if aid not in seen:
                report.issue("region_missing", dicom_id, detail=ANATOMY_NAMES[aid])
        return [regions[aid] for aid in sorted(regions)]

    # -- description -------------------------------------------------------------------------

    def describe(self) -> str:
        """What was found where (probes the image layout if still unknown)."""
        lines = [f"Chest ImaGenome at {self.root}", f"  scene graphs: {self.scene_graph_dir}"]
        if self.splits_dir:
            lines.append(f"  splits: {', '.join(self.splits)} from {self.splits_dir}")
        else:
            lines.append("  splits: no split files; hash split 80/10/10 by patient")
        if self.images_to_avoid_file:
            action = "dropped" if self.skip_images_to_avoid else "kept (skip_images_to_avoid=False)"
            lines.append(f"  images to avoid: {len(self.images_to_avoid):,} from {self.images_to_avoid_file}, {action}")
        else:
            lines.append("  images to avoid: no images_to_avoid.csv found")
        try:
            lines.append(f"  images: {self.image_layout().describe()}")
        except DatasetError as exc:
            lines.append(f"  images: NOT FOUND ({exc.message})")
        return "\n".join(lines)


def _clean_root(root: str) -> str:
    root = str(root).strip()
    if root.startswith("file://"):
        root = root[len("file://") :]
    if storage.is_remote(root):
        return root.rstrip("/")
    return storage.filesystem(root)[1].rstrip("/") or "/"


def _parse_graph(payload: bytes | None) -> dict[str, Any] | None:
    if payload is None:
        return None
    try:
        graph = json.loads(payload)
    except (ValueError, UnicodeDecodeError):
        return None
    return graph if isinstance(graph, dict) else None


def _read_csv(uri: str, s3: S3Options | None, required: tuple[str, ...]) -> Iterator[dict[str, str]]:
    """Rows of a CSV (header names stripped); a missing required column raises DatasetError."""
    reader = csv.DictReader(io.StringIO(storage.read_text(uri, s3)))
    columns = [c.strip() for c in (reader.fieldnames or [])]
    reader.fieldnames = columns
    for column in required:
        if column not in columns:
            raise DatasetError(uri, f"column {column!r} missing (columns: {', '.join(columns) or 'none'})")
    return iter(reader)
