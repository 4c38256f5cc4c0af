"""Open a labelled data set by pointing at it: a Chest ImaGenome copy or a region manifest.

:func:`open_dataset` decides from what is there (local path or ``s3://`` URI alike):

0. a ``dicomweb+http(s)://`` source → :class:`~regionmir.dicomweb_reader.DicomWebReader` (a PACS;
   ``labels=`` names its boxes' manifest or scene graphs, keyed by SOP Instance UID);
1. a ``.csv``/``.tsv``/``.jsonl``/``.ndjson``/``.json`` file → :class:`ManifestReader`;
2. a folder/prefix holding ``silver_dataset/``, ``scene_graph/`` or ``splits/``, or
   ``*_SceneGraph.json`` files → :class:`ChestImaGenomeReader`;
3. a folder/prefix holding ``manifest.csv``, ``manifest.jsonl`` or ``manifest.json`` (what the
   phantom generator writes) → :class:`ManifestReader` on that file.

Both readers expose ``iter_images(split=None)``, ``report`` and ``describe()``;
:func:`films_by_split` reads the labels once and groups the films by split.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any, Protocol

from . import storage
from .chest_imagenome import SCENE_GRAPH_SUFFIX, ChestImaGenomeReader
from .dicomweb import is_dicomweb
from .errors import DatasetError
from .manifest import ManifestReader
from .region_record import ImageRecord
from .scan_report import ScanReport
from .storage import S3Options

MANIFEST_EXTENSIONS: tuple[str, ...] = (".csv", ".tsv", ".jsonl", ".ndjson", ".json")
MANIFEST_NAMES: tuple[str, ...] = ("manifest.csv", "manifest.jsonl", "manifest.json")
_CHEST_IMAGENOME_FOLDERS: tuple[str, ...] = ("silver_dataset", "scene_graph", "splits")


class DatasetReader(Protocol):
    """What every reader offers."""

    report: ScanReport

    def iter_images(self, split: str | None = None) -> Iterator[ImageRecord]: ...

    def describe(self) -> str: ...


def open_dataset(data: str, s3: S3Options | None = None, **kw: Any) -> DatasetReader:
    """The reader for ``data``; ``kw`` goes to the reader (e.g. ``image_root=``, ``splits=``).

    Raises :class:`DatasetError` naming ``data`` and what was looked for when nothing fits.
    """
    data = str(data).strip()
    labels = kw.pop("labels", None)
    if is_dicomweb(data):
        from .dicomweb_reader import DicomWebReader

        return DicomWebReader(data, labels=open_dataset(labels, s3=s3) if labels else None)
    if labels:
        raise DatasetError(
            str(labels), "--labels goes with a DICOMweb source (--data dicomweb+http://…); files carry their own"
        )
    looked_for = (
        f"a manifest file ({', '.join(MANIFEST_EXTENSIONS)}), or a folder holding "
        f"silver_dataset/, scene_graph/, splits/, *{SCENE_GRAPH_SUFFIX} files or "
        f"{', '.join(MANIFEST_NAMES)}"
    )
    if data.lower().endswith(MANIFEST_EXTENSIONS) and not storage.is_dir(data, s3):
        if not storage.exists(data, s3):
            raise DatasetError(data, "manifest not found")
        return ManifestReader(data, s3=s3, **kw)
    if not storage.is_dir(data, s3):
        if storage.exists(data, s3):  # a file with another extension: let the reader sniff it
            return ManifestReader(data, s3=s3, **kw)
        raise DatasetError(data, f"no such file, folder or prefix; expected {looked_for}")
    if any(storage.is_dir(storage.join(data, name), s3) for name in _CHEST_IMAGENOME_FOLDERS):
        return ChestImaGenomeReader(data, s3=s3, **kw)
    for name in MANIFEST_NAMES:
        manifest = storage.join(data, name)
        if storage.exists(manifest, s3):
            return ManifestReader(manifest, s3=s3, **kw)
    if storage.glob(storage.join(data, "*" + SCENE_GRAPH_SUFFIX), s3):
        return ChestImaGenomeReader(data, s3=s3, **kw)
    raise DatasetError(data, f"no data set found; looked for {looked_for}")


def films_by_split(
    data: str, s3: S3Options | None, splits: Iterable[str], labels: str | None = None
) -> tuple[dict[str, list[ImageRecord]], ScanReport]:
    """Read the labels of ``data`` (cheap: no pixels) and group its films by split.

    Returns ``{split: [films]}`` with one (possibly empty) list for each of ``splits``, in the
    reader's order; films of other splits are left out. The reader's :class:`ScanReport` comes
    with it.
    """
    reader = open_dataset(data, s3=s3, labels=labels)
    by_split: dict[str, list[ImageRecord]] = {s: [] for s in splits}
    for record in reader.iter_images():
        if record.split in by_split:
            by_split[record.split].append(record)
    return by_split, reader.report
