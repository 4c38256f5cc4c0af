"""Indexing from a PACS: a real Orthanc (its DICOMweb plugin) started by the tests.

Fast tests (``make test``): the DICOMweb source's parameters, QIDO-RS/WADO-RS through
:mod:`regionmir.dicomweb` (the frontal instance of a study, a missing instance, a PACS that is down),
and the PACS as a data set with labels keyed by SOP Instance UID.

The ingest (``make test-pacs``, Ray): STOW the phantom DICOMs and the real CR chest film of
``pydicom-data`` (RG1, no labels: localised), ``regionmir index --data dicomweb+…``, the rows hold the
UIDs and no patient name or id; a second ingest indexes only the new instances; a PACS that is
down fails clearly and changes nothing.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
import requests
from local_process import ahead_of_other_work

from regionmir.dicomweb import (
    DicomWebClient,
    DicomWebSource,
    InstanceReference,
    instance_pixels,
    is_dicomweb,
    parse_instance_uri,
)
from regionmir.errors import DatasetError, ImageTooLargeError, MissingImageError, StorageError
from regionmir.storage import read_bytes
from regionmir.synth.dataset_writer import SOP_LABELS_FILE, render_phantom, write_phantom_dataset

pytestmark = pytest.mark.integration


def _phantom(index: int, *, seed: int = 11, size: int = 128, **attributes) -> bytes:
    data, _ = render_phantom(seed, index, size, "dicom", "realistic")
    if not attributes:
        return data
    ds = pydicom.dcmread(io.BytesIO(data))
    for name, value in attributes.items():
        setattr(ds, name, value)
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def _uids(data: bytes) -> tuple[str, str, str]:
    ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
    return str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID)


def test_a_dicomweb_source_names_its_search_and_refuses_what_it_does_not_know():
    source = DicomWebSource.parse(
        "dicomweb+http://pacs:8042/dicom-web/?modality=cr,DX&study_date=20240101-20241231&study_uid=1.2.3,1.2.4"
    )
    assert source.root == "http://pacs:8042/dicom-web"
    assert source.modalities == ("CR", "DX") and source.study_date == "20240101-20241231"
    assert source.study_uids == ("1.2.3", "1.2.4")
    assert DicomWebSource.parse("dicomweb+https://pacs/dicom-web").modalities == ("CR", "DX")
    for bad, said in (
        ("dicomweb+http://pacs/dicom-web?modalty=CR", "unknown parameter"),
        ("dicomweb+http://pacs/dicom-web?study_date=2024", "study_date"),
        ("dicomweb+http://pacs/dicom-web?study_uid=1.2.x", "study_uid"),
        ("dicomweb+http://pacs/dicom-web?modality=C;R", "modality"),
        ("http://pacs/dicom-web", "dicomweb+"),
    ):
        with pytest.raises(DatasetError, match=said):
            DicomWebSource.parse(bad)
    with pytest.raises(DatasetError, match="carries no credentials"):  # they would reach logs and every hit
        DicomWebSource.parse("dicomweb+http://alice:secret@pacs/dicom-web")
    with pytest.raises(ValueError, match="carries no credentials"):
        InstanceReference("http://alice:secret@pacs/dicom-web", "1.2", "1.2.3", "1.2.3.4")
    assert not DicomWebSource.parse("dicomweb+http://pacs/dicom-web?modality=DX,CR").narrowed
    assert DicomWebSource.parse("dicomweb+http://pacs/dicom-web?modality=DX").narrowed
    assert DicomWebSource.parse("dicomweb+http://pacs/dicom-web?study_date=20240101-").narrowed
    reference = InstanceReference("http://pacs/dicom-web/", "1.2", "1.2.3", "1.2.3.4")
    assert reference.uri == "dicomweb+http://pacs/dicom-web/studies/1.2/series/1.2.3/instances/1.2.3.4"
    assert parse_instance_uri(reference.uri) == reference and is_dicomweb(reference.uri)
    with pytest.raises(ValueError, match="DICOM UID"):
        InstanceReference("http://pacs/dicom-web", "1.2", "1.2.3", "../../etc")


def test_qido_finds_wado_reads_and_a_study_resolves_to_its_first_frontal_film(orthanc):
    lateral = _phantom(0, ViewPosition="LL")
    study, _, _ = _uids(lateral)
    # two frontal films in the lateral's study: the first by series then instance number wins
    second = _phantom(1, StudyInstanceUID=study, SeriesNumber=2, InstanceNumber=1)
    first = _phantom(2, StudyInstanceUID=study, SeriesNumber=1, InstanceNumber=3)
    other = _phantom(3)
    orthanc.store([lateral, second, first, other])
    client = DicomWebClient(orthanc.dicomweb_url)

    found = client.source_instances(DicomWebSource.parse("dicomweb+" + orthanc.dicomweb_url))
    assert len(found) == 4 and all(i.modality == "DX" for i in found)
    assert {i.view for i in found} == {"PA", "AP", ""}  # LL is not a frontal view
    assert all(len(i.patient_hash) == 16 for i in found)
    assert client.source_instances(DicomWebSource.parse(f"dicomweb+{orthanc.dicomweb_url}?modality=CR")) == []
    only_study = client.source_instances(DicomWebSource.parse(f"dicomweb+{orthanc.dicomweb_url}?study_uid={study}"))
    assert len(only_study) == 3

    frontal = client.frontal_instance(study)
    assert frontal.reference.sop_instance_uid == _uids(first)[2]
    assert client.frontal_instance(study, _uids(second)[1]).reference.sop_instance_uid == _uids(second)[2]
    with pytest.raises(MissingImageError, match="no frontal"):
        client.frontal_instance(study, _uids(lateral)[1])

    # WADO-RS through the storage layer: the same pixels as stored
    reference = InstanceReference(orthanc.dicomweb_url, *_uids(other))
    fetched = pydicom.dcmread(io.BytesIO(read_bytes(reference.uri)))
    stored = pydicom.dcmread(io.BytesIO(other))
    assert fetched.SOPInstanceUID == stored.SOPInstanceUID
    assert np.array_equal(fetched.pixel_array, stored.pixel_array)
    assert client.metadata(reference).SOPInstanceUID == stored.SOPInstanceUID
    with pytest.raises(MissingImageError):
        read_bytes(InstanceReference(orthanc.dicomweb_url, study, "1.2.3", "1.2.3.4").uri)

    # a request the PACS refuses (Orthanc answers 400 to a WADO-RS retrieve asking for bare
    # application/dicom) is not "unavailable": asking again changes nothing
    def refused() -> None:
        requests.get(reference.retrieve_url, headers={"Accept": "application/dicom"}, timeout=30).raise_for_status()

    with pytest.raises(StorageError, match="refused a test retrieve") as no:
        client._call("a test retrieve", refused)
    assert no.value.reason == "pacs_refused"

    orthanc.kill()
    with pytest.raises(StorageError, match="did not answer") as down:
        client.frontal_instance(study)
    assert down.value.reason == "pacs_unavailable"
    with pytest.raises(StorageError):
        read_bytes(reference.uri)


def test_an_instance_over_the_pixel_limit_is_refused_from_its_metadata_not_fetched(orthanc):
    """A query film from the PACS is held to the upload's ``limits.max_pixels`` before it is fetched:
    its metadata (no pixels) gives rows x columns x frames; the service answers 413 as for an upload."""
    import asyncio

    from serving.config import ServeSettings
    from serving.errors import ApiError
    from serving.pacs import PacsLink

    data = _phantom(3)
    orthanc.store([data])
    reference = InstanceReference(orthanc.dicomweb_url, *_uids(data))
    client = DicomWebClient(orthanc.dicomweb_url)
    header = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
    pixels = int(header.Rows) * int(header.Columns)
    assert instance_pixels(client.metadata(reference)) == pixels
    with pytest.raises(ImageTooLargeError, match=f"has {pixels} pixels .* not fetched"):
        client.retrieve(reference, max_pixels=pixels - 1)
    fetched = pydicom.dcmread(io.BytesIO(client.retrieve(reference, max_pixels=pixels)))
    assert fetched.SOPInstanceUID == reference.sop_instance_uid

    settings = ServeSettings.from_dict(
        {
            "model": "m",
            "milvus": "x.db",
            "auth": {"api_key": "k" * 32},
            "pacs": {"dicomweb_url": orthanc.dicomweb_url},
            "limits": {"max_pixels": pixels - 1},
        }
    )
    instance = client.find_instance(reference.sop_instance_uid)
    with pytest.raises(ApiError) as refused:
        asyncio.run(PacsLink(settings).retrieve(instance))
    assert (refused.value.status, refused.value.reason) == (413, "image_too_large")
    assert "not fetched" in refused.value.message


def test_the_pacs_as_a_data_set_takes_its_boxes_from_labels_keyed_by_sop_instance_uid(orthanc, tmp_path):
    from regionmir.dataset import open_dataset

    summary = write_phantom_dataset(str(tmp_path / "ph"), images=3, size=128, seed=5, fmt="dicom", progress=False)
    films = sorted((tmp_path / "ph" / "images").rglob("*.dcm"))
    orthanc.store([f.read_bytes() for f in films] + [_phantom(7)])  # the last has no labels
    reader = open_dataset("dicomweb+" + orthanc.dicomweb_url, labels=str(tmp_path / "ph" / SOP_LABELS_FILE))
    records = {r.image_id: r for r in reader.iter_images()}
    assert len(records) == summary["images"] + 1 and reader.labelled == 3 and reader.unlabelled == 1
    for film in films:
        study, series, sop = _uids(film.read_bytes())
        record = records[sop]
        assert record.image_uri == InstanceReference(orthanc.dicomweb_url, study, series, sop).uri
        assert record.split == "train" and len(record.regions) == 36
        assert all(region.image_uri == record.image_uri and region.image_id == sop for region in record.regions)
    assert not records[_uids(_phantom(7))[2]].regions
    with pytest.raises(DatasetError, match="--labels goes with a DICOMweb source"):
        open_dataset(str(tmp_path / "ph"), labels=str(tmp_path / "ph" / SOP_LABELS_FILE))


# -- the ingest, through Ray (make test-pacs) ------------------------------------------------------


def _regionmir() -> list[str]:
    beside = Path(sys.executable).parent / "regionmir"
    return [str(beside)] if beside.exists() else [sys.executable, "-m", "regionmir.cli"]


def _index(
    orthanc_url: str, model: str, db: str, labels: str | None, *extra: str, search: str = ""
) -> subprocess.CompletedProcess:
    args = [*_regionmir(), "index", "--data", "dicomweb+" + orthanc_url + search, "--model", model, "--milvus", db]
    args += ["--labels", labels] if labels else []
    args += list(extra)
    with ahead_of_other_work():
        return subprocess.run(args, capture_output=True, text=True, timeout=600, env={**os.environ})


def _summary(stdout: str) -> dict:
    return json.loads(stdout[stdout.rindex("\n{") + 1 :] if "\n{" in stdout else stdout)


_SCAN = """
import json, sys
from indexing.region_index import RegionIndex
with RegionIndex(sys.argv[1]) as index:
    fields = ("image_id", "box_source", "patient_hash", "study_hash", "view", "image_uri")
    print(json.dumps([list(row) for row in index.scan(sys.argv[2], fields)]))
"""


def _rows(db: str, collection: str) -> list[list[str]]:
    """Every row's text fields, read by another process (milvus-lite locks a file to the process
    that opened it: the next ingest must be able to open it)."""
    done = subprocess.run([sys.executable, "-c", _SCAN, db, collection], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_index_from_dicomweb_holds_uids_not_patients_and_a_second_ingest_adds_only_new_instances(orthanc, tmp_path):
    from pydicom.data import get_testdata_file
    from random_model_index import build_random_model_index_subprocess

    built = build_random_model_index_subprocess(str(tmp_path / "model"), images=8, size=128)
    write_phantom_dataset(str(tmp_path / "ph"), images=6, size=128, seed=21, fmt="dicom", progress=False)
    films = sorted((tmp_path / "ph" / "images").rglob("*.dcm"))
    real = Path(get_testdata_file("RG1_UNCR.dcm")).read_bytes()  # a real CR chest film, no labels
    assert len(orthanc.stow([f.read_bytes() for f in films[:4]] + [real])) == 5
    labels = str(tmp_path / "ph" / SOP_LABELS_FILE)
    db = str(tmp_path / "pacs.db")

    first = _index(orthanc.dicomweb_url, built["model"], db, labels)
    assert first.returncode == 0, first.stderr[-3000:]
    summary = _summary(first.stdout)
    assert summary["films"] == 5 and summary["films_localised"] == 1 and summary["films_already_indexed"] == 0
    assert summary["films_skipped"] == 0 and summary["rows"] == summary["rows_written"] > 4 * 29

    secrets = set()
    for data in [f.read_bytes() for f in films] + [real]:
        ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
        secrets |= {str(ds.PatientID), str(ds.PatientName), str(ds.get("AccessionNumber", "") or "")} - {""}
    rows = _rows(db, summary["collection"])
    uids = {_uids(f.read_bytes())[2] for f in films[:4]} | {_uids(real)[2]}
    assert {image_id for image_id, *_ in rows} == uids
    assert {source for image_id, source, *_ in rows if image_id == _uids(real)[2]} == {"localiser"}
    assert {source for image_id, source, *_ in rows if image_id != _uids(real)[2]} == {"label"}
    assert not [s for s in secrets if s in json.dumps(rows)], "a patient name or id reached the index"
    assert not [s for s in secrets if s in first.stdout + first.stderr], "a patient name or id reached the log"

    # a second ingest: only the two instances stored since are read and embedded
    assert len(orthanc.stow([f.read_bytes() for f in films[4:]])) == 2
    second = _index(orthanc.dicomweb_url, built["model"], db, labels)
    assert second.returncode == 0, second.stderr[-3000:]
    again = _summary(second.stdout)
    assert again["films"] == 7 and again["films_already_indexed"] == 5
    assert again["rows_written"] == again["rows"] - summary["rows"] > 0
    assert not [s for s in secrets if s in second.stdout + second.stderr]

    # a narrower search (one study) leaves the rows of the instances it does not list alone
    study = _uids(films[0].read_bytes())[0]
    narrow = _index(orthanc.dicomweb_url, built["model"], db, labels, search=f"?study_uid={study}")
    assert narrow.returncode == 0, narrow.stderr[-3000:]
    narrowed = _summary(narrow.stdout)
    assert narrowed["films"] == narrowed["films_already_indexed"] == 1 and narrowed["rows_written"] == 0
    assert narrowed["rows"] == again["rows"] and narrowed["rows_of_missing_films_removed"] == 0

    # an instance leaves the PACS: the next full ingest would remove its rows — over 10 % of the
    # collection, so it stops and removes nothing until told --allow-mass-removal
    gone = _uids(films[5].read_bytes())[2]
    orthanc.delete_instance(gone)
    guarded = _index(orthanc.dicomweb_url, built["model"], db, labels)
    assert guarded.returncode == 2 and "--allow-mass-removal" in guarded.stderr
    assert len(_rows(db, "regions")) == again["rows"]
    removed = _index(orthanc.dicomweb_url, built["model"], db, labels, "--allow-mass-removal")
    assert removed.returncode == 0, removed.stderr[-3000:]
    after = _summary(removed.stdout)
    assert after["films"] == 6 and after["rows_of_missing_films_removed"] > 0
    assert after["rows"] == again["rows"] - after["rows_of_missing_films_removed"]
    assert gone not in {image_id for image_id, *_ in _rows(db, "regions")}

    # the PACS goes away: a clear error, nothing changed
    orthanc.kill()
    down = _index(orthanc.dicomweb_url, built["model"], db, labels)
    assert down.returncode == 2
    assert "DICOMweb server did not answer" in down.stderr.strip().splitlines()[-1]
    assert len(_rows(db, "regions")) == after["rows"]
