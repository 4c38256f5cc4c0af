"""The real Orthanc PACS the tests start (``tests/orthanc_server.py``): DICOMweb search and retrieve of
stored phantom films, and a PACS that is killed and comes back on the same storage."""

from __future__ import annotations

import io

import pydicom
import pytest
import requests

from regionmir.synth.dataset_writer import DEFAULT_PRESET, render_phantom

DICOM_JSON = {"Accept": "application/dicom+json"}
MULTIPART_DICOM = {"Accept": 'multipart/related; type="application/dicom"'}
SOP_INSTANCE_UID = "00080018"


def phantom_dicoms(count: int) -> list[bytes]:
    """``count`` phantom films as DICOM files (128 × 128, seed 0)."""
    return [render_phantom(0, index, 128, "dicom", DEFAULT_PRESET)[0] for index in range(count)]


def search_instances(dicomweb_url: str) -> list[dict]:
    """QIDO-RS ``/instances``: one DICOM JSON dataset per stored instance."""
    answer = requests.get(f"{dicomweb_url}/instances", headers=DICOM_JSON, timeout=10)
    answer.raise_for_status()
    return answer.json()


def value(dataset: dict, tag: str):
    """The first value of ``tag`` (``"GGGGEEEE"``) in a DICOM JSON dataset."""
    return dataset[tag]["Value"][0]


def test_stored_films_are_found_and_retrieved_over_dicomweb(orthanc):
    files = phantom_dicoms(2)
    answers = orthanc.store(files)
    assert [answer["Status"] for answer in answers] == ["Success", "Success"]
    assert orthanc.instance_count() == 2

    found = search_instances(orthanc.dicomweb_url)
    stored = [pydicom.dcmread(io.BytesIO(data)) for data in files]
    assert sorted(value(ds, SOP_INSTANCE_UID) for ds in found) == sorted(ds.SOPInstanceUID for ds in stored)

    first = stored[0]
    answer = requests.get(
        f"{orthanc.dicomweb_url}/studies/{first.StudyInstanceUID}/series/{first.SeriesInstanceUID}"
        f"/instances/{first.SOPInstanceUID}",
        headers=MULTIPART_DICOM,
        timeout=10,
    )
    assert answer.status_code == 200
    assert answer.headers["Content-Type"].startswith("multipart/related")
    assert files[0] in answer.content


def test_a_killed_pacs_refuses_connections_and_comes_back_with_its_films(orthanc):
    orthanc.store(phantom_dicoms(2))
    uids = sorted(value(ds, SOP_INSTANCE_UID) for ds in search_instances(orthanc.dicomweb_url))
    url = orthanc.url

    orthanc.kill()
    with pytest.raises(requests.ConnectionError):
        search_instances(orthanc.dicomweb_url)

    orthanc.start()
    assert orthanc.url == url
    assert orthanc.instance_count() == 2
    assert sorted(value(ds, SOP_INSTANCE_UID) for ds in search_instances(orthanc.dicomweb_url)) == uids
