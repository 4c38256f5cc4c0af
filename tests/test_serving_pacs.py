"""The query service and the hospital's PACS, end to end on 127.0.0.1.

A real Orthanc (``tests/orthanc_server.py``) holds nine phantom DICOMs of six patients: patient 0's
study has three films — a PA film in series 2, a second frontal film in series 1 (instance 2) and a
lateral (``LL``) in that series (instance 1), so "the frontal film, the first by series and
instance number" is the series-1 frontal one —, patients 1–4 one film each, patient 5 a study with
only a lateral. The real ``regionmir index --data dicomweb+…`` indexes them (a child process; the
model is a random-init encoder with its atlas, ``tests/random_model_index.py``, so every film gets
its boxes from the localiser), and a real Ray Serve application serves the index with an API key,
``pacs.dicomweb_url`` and ``pacs.viewer_url``.

Checked over HTTP: queries by SOP Instance UID, by study (its frontal film), by study + series;
hits whose UIDs retrieve their own instances from Orthanc; ``GET /v1/results/{key}/dicom``;
``export=csv``; ``export=sr`` (Orthanc then holds the report, read back with
:func:`regionmir.search_report.read_structured_report`); the errors (bad UID, unknown UID, a study
without a frontal film, an upload and a reference at once); Orthanc killed (503
``pacs_unavailable`` with ``Retry-After``, uploads still answered) and back; a front door without an
API key on the same PACS-connected index refused; the page's "paste a UID" path in Chromium; and
that no patient name, id or accession number reached the service's logs or metric labels.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
import pytest
import requests
from local_process import ahead_of_other_work, free_port
from orthanc_server import OrthancServer
from pydicom.uid import generate_uid

from regionmir.dicomweb import DicomWebClient, InstanceReference, parse_instance_uri
from serving.config import ConfigError, ServeSettings

integration = pytest.mark.integration

API_KEY = "pacs-test-key-" + "5" * 20
AUTH = {"Authorization": f"Bearer {API_KEY}"}
SALT = "pacs-test-salt-" + "8" * 20
VIEWER = "http://viewer.example/viewer?StudyInstanceUIDs={study_uid}&SeriesInstanceUIDs={series_uid}"
MULTIPART_DICOM = {"Accept": 'multipart/related; type="application/dicom"'}
SIZE = 160
CHROMIUM = "/usr/bin/chromium"


@dataclass
class Film:
    """One instance stored in Orthanc, and the patient identifiers it carries."""

    name: str
    data: bytes
    study_uid: str
    series_uid: str
    sop_uid: str
    view: str
    patient_id: str
    patient_name: str
    accession: str


@dataclass
class PacsService:
    base: str
    orthanc: OrthancServer
    films: dict[str, Film]  # the stored ones, and "uploaded" (never in the PACS)
    model: str
    milvus: str
    metrics_port: int
    index_output: str  # the index job's stdout and stderr
    timings: dict[str, float] = field(default_factory=dict)

    def search(self, data=None, files=None, headers=AUTH, base=None):
        return requests.post((base or self.base) + "/v1/search", data=data, files=files, headers=headers, timeout=120)

    def get(self, path: str, headers=AUTH, base=None):
        return requests.get((base or self.base) + path, headers=headers, timeout=60)


#: The attributes a :class:`Film` keeps, in its field order after ``name`` and ``data``.
_FILM_ATTRIBUTES = (
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "SOPInstanceUID",
    "ViewPosition",
    "PatientID",
    "PatientName",
    "AccessionNumber",
)


def _film(name: str, data: bytes, ds: pydicom.Dataset) -> Film:
    return Film(name, data, *(str(ds.get(keyword)) for keyword in _FILM_ATTRIBUTES))


def _films() -> dict[str, Film]:
    """The nine instances of the module docstring, as DICOM bytes with their UIDs."""
    from regionmir.synth.dataset_writer import render_phantom

    def film(index: int) -> pydicom.Dataset:
        return pydicom.dcmread(io.BytesIO(render_phantom(21, index, SIZE, "dicom", "realistic")[0]))

    def stored(name: str, ds: pydicom.Dataset) -> Film:
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        return _film(name, buffer.getvalue(), ds)

    def into(ds: pydicom.Dataset, owner: pydicom.Dataset, series_uid: str, view: str, series: int, instance: int):
        """``ds`` made a film of ``owner``'s patient and study, in series ``series_uid``."""
        for keyword in ("PatientID", "PatientName", "PatientSex", "StudyInstanceUID", "AccessionNumber"):
            setattr(ds, keyword, getattr(owner, keyword))
        for keyword in ("StudyDate", "StudyTime", "StudyID"):
            if keyword in owner:
                setattr(ds, keyword, getattr(owner, keyword))
        ds.SeriesInstanceUID = series_uid
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.ViewPosition, ds.SeriesNumber, ds.InstanceNumber = view, series, instance
        return ds

    a_pa = film(0)
    a_pa.SeriesNumber, a_pa.InstanceNumber = 2, 1
    series_one = generate_uid()
    a_frontal = into(film(6), a_pa, series_one, "AP", 1, 2)
    a_lateral = into(film(7), a_pa, series_one, "LL", 1, 1)
    only_lateral = film(5)
    only_lateral.ViewPosition = "LL"
    films = {"a_pa": a_pa, "a_frontal": a_frontal, "a_lateral": a_lateral, "only_lateral": only_lateral}
    films.update({f"p{i}": film(i) for i in range(1, 5)})
    return {name: stored(name, ds) for name, ds in films.items()}


@pytest.fixture(scope="module")
def pacs(tmp_path_factory):
    import ray
    from random_model_index import build_random_model_index_subprocess
    from ray import serve

    from serving.deployments import start_service

    timings: dict[str, float] = {}
    started = time.perf_counter()
    root = tmp_path_factory.mktemp("serving_pacs")
    model = build_random_model_index_subprocess(str(root / "model"), images=4, size=SIZE, seed=3)
    orthanc = OrthancServer(root / "orthanc").start()
    films = _films()
    orthanc.stow([f.data for f in films.values()])
    films["uploaded"] = _films_outside_the_pacs()
    timings["setup"] = time.perf_counter() - started
    try:
        with pytest.MonkeyPatch.context() as env:
            env.setenv("REGIONMIR_ID_SALT", SALT)  # the index job and every replica (FORWARDED_ENV)
            env.delenv("REGIONMIR_API_KEY", raising=False)
            # Serve throughput-optimised buffers 1000 log records per replica: write each at once, so
            # the privacy check reads every line the replicas logged (only this module's Ray sees it)
            env.setenv("RAY_SERVE_REQUEST_PATH_LOG_BUFFER_SIZE", "1")
            t = time.perf_counter()
            project = Path(__file__).resolve().parent.parent
            done = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "regionmir.cli",
                    "index",
                    "--data",
                    "dicomweb+" + orthanc.dicomweb_url,
                    "--model",
                    model["model"],
                    "--milvus",
                    str(root / "pacs.db"),
                ],
                capture_output=True,
                text=True,
                cwd=project,
                env=dict(os.environ),
                timeout=600,
                check=False,
            )
            timings["index"] = time.perf_counter() - t
            assert done.returncode == 0, done.stderr[-3000:]
            summary = json.loads(done.stdout[done.stdout.index("{") :])
            assert summary["films"] == 8 and summary["films_localised"] == 8 and summary["rows"] > 0, summary

            t = time.perf_counter()
            metrics_port = free_port()
            settings = ServeSettings.from_dict(
                {
                    "model": model["model"],
                    "milvus": str(root / "pacs.db"),
                    "http": {"host": "127.0.0.1", "port": free_port()},
                    "auth": {"api_key": API_KEY},
                    "pacs": {"dicomweb_url": orthanc.dicomweb_url, "viewer_url": VIEWER},
                    "encoder": {"min_replicas": 1, "max_replicas": 1},
                    "ingress": {"min_replicas": 1, "max_replicas": 1},
                    "ray": {"num_cpus": 4, "metrics_export_port": metrics_port},
                }
            )
            with ahead_of_other_work():
                base = start_service(settings, ready_timeout_s=420)
            timings["serve"] = time.perf_counter() - t
            print(f"\n[test_serving_pacs] set-up {timings} (s)")
            yield PacsService(
                base,
                orthanc,
                films,
                model["model"],
                str(root / "pacs.db"),
                metrics_port,
                done.stdout + done.stderr,
                timings,
            )
    finally:
        if ray.is_initialized():  # serve.shutdown() would start a Ray of its own otherwise
            serve.shutdown()
            ray.shutdown()
        orthanc.stop()


def _films_outside_the_pacs() -> Film:
    """A phantom of a seventh patient, only ever uploaded (never stored in the PACS)."""
    from regionmir.synth.dataset_writer import render_phantom

    data = render_phantom(22, 0, SIZE, "dicom", "realistic")[0]
    return _film("uploaded", data, pydicom.dcmread(io.BytesIO(data)))


# ------------------------------------------------------------------------------------- no PACS needed


def test_pacs_settings_come_from_the_file_or_the_environment_and_are_checked(tmp_path):
    example = Path(__file__).resolve().parent.parent / "serving" / "config.example.yaml"
    settings = ServeSettings.load(str(example), env={})
    assert settings.pacs.dicomweb_url is None and settings.pacs.viewer_url is None
    env = {
        "REGIONMIR_SERVE__PACS__DICOMWEB_URL": "http://pacs.example:8042/dicom-web",
        "REGIONMIR_SERVE__PACS__VIEWER_URL": VIEWER,
    }
    settings = ServeSettings.load(str(example), env=env).validate()
    assert settings.pacs.dicomweb_url == "http://pacs.example:8042/dicom-web" and settings.pacs.viewer_url == VIEWER
    assert settings.pacs.viewer_link("1.2", "3.4", "5.6") == (
        "http://viewer.example/viewer?StudyInstanceUIDs=1.2&SeriesInstanceUIDs=3.4"
    )
    (tmp_path / "c.yaml").write_text("pacs:\n  dicomweb_url: https://pacs/dicom-web\n  viewer_url: null\n")
    assert ServeSettings.load(str(tmp_path / "c.yaml"), env={}).pacs.dicomweb_url == "https://pacs/dicom-web"
    base = {"model": "m", "milvus": "x.db"}
    for pacs, message in [
        ({"dicomweb_url": "pacs:8042"}, "pacs.dicomweb_url"),
        ({"viewer_url": "http://viewer/{patient_id}"}, "unknown field"),
        ({"viewer_url": "http://viewer/?s={sop_instance_uid}"}, "study_uid"),
        ({"viewer_url": "http://viewer/{study_uid"}, "not a template"),
    ]:
        with pytest.raises(ConfigError, match=message):
            ServeSettings.from_dict({**base, "pacs": pacs}).validate()
    with pytest.raises(ConfigError, match="unknown setting 'pacs.url'"):
        ServeSettings.load(env={"REGIONMIR_SERVE__PACS__URL": "http://x"})


def test_the_service_sends_its_pacs_credentials_only_to_the_configured_pacs(monkeypatch):
    """An index row may name another DICOMweb root than ``pacs.dicomweb_url`` (an index built against
    another PACS): its films are read without the service's token."""
    from regionmir.dicomweb import same_root
    from serving.pacs import PacsLink

    monkeypatch.setenv("REGIONMIR_DICOMWEB_TOKEN", "the-service-token")
    settings = ServeSettings.from_dict(
        {
            "model": "m",
            "milvus": "x.db",
            "auth": {"api_key": "k" * 32},
            "pacs": {"dicomweb_url": "http://PACS:8042/dicom-web/"},
        }
    )
    link = PacsLink(settings)
    ours = InstanceReference("http://pacs:8042/dicom-web", "1.2", "1.2.3", "1.2.3.4")
    theirs = InstanceReference("http://elsewhere:8042/dicom-web", "1.2", "1.2.3", "1.2.3.4")
    assert link.client_of(ours).sends_credentials
    assert not link.client_of(theirs).sends_credentials
    assert not PacsLink(ServeSettings.from_dict({"model": "m", "milvus": "x.db"})).client_of(ours).sends_credentials
    assert same_root("http://PACS:8042/dicom-web/", "http://pacs:8042/dicom-web")
    assert not same_root("https://pacs:8042/dicom-web", "http://pacs:8042/dicom-web")
    assert not same_root("http://pacs:8042/dicom-web", "http://pacs:8042/other")


def test_a_report_leaves_out_the_hits_outside_the_pacs():
    """``export=sr`` on a search whose second hit is a file-collection film: the report holds the
    query and hits 1 and 3, and the answer counts the one left out."""
    import asyncio

    from regionmir.dicomweb import InstanceReference, PacsInstance
    from regionmir.search_report import read_structured_report
    from serving.search_export import store_report

    films = _films()
    stored: list = []

    def reference(film: Film) -> InstanceReference:
        return InstanceReference("http://pacs.example/dicom-web", film.study_uid, film.series_uid, film.sop_uid)

    class Pacs:  # what store_report asks of serving.pacs.PacsLink, without a server
        root = "http://pacs.example/dicom-web"

        def client(self):
            return None

        async def metadata(self, references):
            by_uid = {f.sop_uid: pydicom.dcmread(io.BytesIO(f.data), stop_before_pixels=True) for f in films.values()}
            return {r.sop_instance_uid: by_uid[r.sop_instance_uid] for r in references}

        async def store(self, datasets):
            stored.extend(datasets)
            return [str(ds.SOPInstanceUID) for ds in datasets]

    query, first, third = films["p1"], films["p2"], films["a_pa"]
    hits = [
        {"rank": rank, "score": score, "anatomy": "left lung", "key": f"{rank:032x}", "box": [20.0, 20.0, 70.0, 90.0]}
        for rank, score in ((1, 0.9), (2, 0.8), (3, 0.7))
    ]
    answer = {
        "query": {"box": [10.0, 10.0, 60.0, 80.0], "anatomy": None, "predicted_anatomy": "right lung"},
        "results": hits,
    }
    hits[0]["dicom"], hits[2]["dicom"] = _instance(first), _instance(third)
    answer["query"]["dicom"] = _instance(query)
    instance = PacsInstance(reference(query), "", "DX", "PA", "", None, None)
    refs = [reference(first), None, reference(third)]
    report = asyncio.run(store_report(Pacs(), answer, instance, refs, "finetune-test"))
    assert (report["hits_included"], report["hits_left_out"]) == (2, 1)
    assert report["study_uid"] == query.study_uid and len(stored) == 1
    assert report["retrieve_url"].endswith(f"/instances/{stored[0].SOPInstanceUID}")
    read_query, read_hits = read_structured_report(stored[0])
    assert read_query.sop_instance_uid == query.sop_uid and read_query.anatomy == "right lung"
    assert [(h.rank, h.sop_instance_uid) for h in read_hits] == [(1, first.sop_uid), (3, third.sop_uid)]


# ------------------------------------------------------------------------------------- a real PACS


def _error(response: requests.Response, status: int, reason: str) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["reason"] == reason, error
    assert error["message"]
    return error


def _instance(film: Film) -> dict:
    return {"study_uid": film.study_uid, "series_uid": film.series_uid, "sop_instance_uid": film.sop_uid}


def _by_sop(pacs: PacsService) -> dict[str, Film]:
    return {f.sop_uid: f for f in pacs.films.values()}


@integration
def test_a_query_by_sop_instance_uid_searches_that_film_and_hits_open_in_the_pacs(pacs):
    film = pacs.films["p2"]
    answer = pacs.search({"sop_instance_uid": film.sop_uid, "anatomy": "left lung", "k": "12"})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    query = body["query"]
    assert {k: query["dicom"][k] for k in ("study_uid", "series_uid", "sop_instance_uid")} == _instance(film)
    assert query["dicom"]["retrieve_url"] == (
        f"{pacs.orthanc.dicomweb_url}/studies/{film.study_uid}/series/{film.series_uid}/instances/{film.sop_uid}"
    )
    assert query["box_source"] == "atlas" and query["image_size"] == [SIZE, SIZE]
    assert body["timings_ms"]["fetch"] > 0 and body["timings_ms"]["decode"] > 0
    results = body["results"]
    assert len(results) == 12
    # the query film is indexed too: its own left lung, localised as the index job did, is the nearest
    assert results[0]["image_id"] == film.sop_uid and results[0]["score"] == pytest.approx(1.0, abs=1e-4)
    stored = _by_sop(pacs)
    for hit in results:
        dicom = hit["dicom"]
        assert hit["box_source"] == "localiser" and dicom["sop_instance_uid"] == hit["image_id"]
        owner = stored[dicom["sop_instance_uid"]]
        assert (dicom["study_uid"], dicom["series_uid"]) == (owner.study_uid, owner.series_uid)
        assert dicom["viewer_url"] == VIEWER.format(study_uid=owner.study_uid, series_uid=owner.series_uid)
    for uid in {hit["dicom"]["sop_instance_uid"] for hit in results}:
        hit = next(h for h in results if h["dicom"]["sop_instance_uid"] == uid)
        got = requests.get(hit["dicom"]["retrieve_url"], headers=MULTIPART_DICOM, timeout=30)
        assert got.status_code == 200 and got.headers["content-type"].startswith("multipart/related")
        # the instance itself, by its WADO-RS URL: its one part is the stored file, UIDs and pixels
        reference = parse_instance_uri("dicomweb+" + hit["dicom"]["retrieve_url"])
        fetched = pydicom.dcmread(io.BytesIO(DicomWebClient(reference.root).retrieve(reference)))
        original = pydicom.dcmread(io.BytesIO(stored[uid].data))
        assert fetched.SOPInstanceUID == uid and fetched.StudyInstanceUID == stored[uid].study_uid
        assert np.array_equal(fetched.pixel_array, original.pixel_array)

    key = results[1]["key"]
    same = pacs.get(f"/v1/results/{key}/dicom")
    assert same.status_code == 200 and same.json() == results[1]["dicom"]
    crop = pacs.get(f"/v1/results/{key}/crop")
    assert crop.status_code == 200 and crop.headers["content-type"] == "image/png"
    whole = pacs.get(f"/v1/results/{key}/image")
    assert whole.status_code == 200 and whole.headers["x-image-width"] == str(SIZE)
    _error(pacs.get("/v1/results/" + "0" * 32 + "/dicom"), 404, "not_found")
    _error(pacs.get("/v1/results/nope/dicom"), 422, "bad_key")
    _error(pacs.get(f"/v1/results/{key}/dicom", headers={}), 401, "unauthorized")


@integration
def test_a_study_resolves_to_its_first_frontal_film(pacs):
    a = pacs.films["a_frontal"]  # series 1, instance 2: series 1's instance 1 is the lateral
    by_study = pacs.search({"study_uid": a.study_uid, "box": "40,30,120,110", "k": "3"})
    assert by_study.status_code == 200, by_study.text
    assert by_study.json()["query"]["dicom"]["sop_instance_uid"] == a.sop_uid
    assert by_study.json()["query"]["box_source"] == "user"
    pa = pacs.films["a_pa"]  # the frontal film of series 2
    by_series = pacs.search({"study_uid": pa.study_uid, "series_uid": pa.series_uid, "box": "40,30,120,110"})
    assert by_series.status_code == 200 and by_series.json()["query"]["dicom"]["sop_instance_uid"] == pa.sop_uid
    # a SOP instance with its study (no series), and the lateral itself when named
    lateral = pacs.films["a_lateral"]
    named = pacs.search({"study_uid": lateral.study_uid, "sop_instance_uid": lateral.sop_uid, "box": "40,30,120,110"})
    assert named.status_code == 200 and named.json()["query"]["dicom"] == {
        **_instance(lateral),
        "retrieve_url": named.json()["query"]["dicom"]["retrieve_url"],
    }
    preview = requests.post(pacs.base + "/v1/preview", data={"study_uid": a.study_uid}, headers=AUTH, timeout=60)
    assert preview.status_code == 200 and preview.content.startswith(b"\x89PNG")
    assert preview.headers["x-sop-instance-uid"] == a.sop_uid and preview.headers["x-image-width"] == str(SIZE)


@integration
def test_csv_export(pacs):
    film = pacs.films["p3"]
    answer = pacs.search({"study_uid": film.study_uid, "box": "30,30,100,120", "k": "5", "export": "csv"})
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(answer.text)))
    assert [r["role"] for r in rows] == ["query"] + ["hit"] * 5
    assert rows[0]["sop_instance_uid"] == film.sop_uid and rows[0]["study_instance_uid"] == film.study_uid
    assert [float(v) for v in (rows[0]["x1"], rows[0]["y1"], rows[0]["x2"], rows[0]["y2"])] == [30, 30, 100, 120]
    stored = _by_sop(pacs)
    for rank, row in enumerate(rows[1:], start=1):
        assert int(row["rank"]) == rank and len(row["key"]) == 32
        assert stored[row["sop_instance_uid"]].study_uid == row["study_instance_uid"]
    upload = pacs.search(
        {"box": "30,30,100,120", "k": "2", "export": "csv"},
        files={"image": ("film.dcm", pacs.films["uploaded"].data, "application/dicom")},
    )
    assert upload.status_code == 200 and upload.text.splitlines()[1].startswith("query,")  # an upload: CSV too


@integration
def test_sr_export_is_stored_in_the_pacs_and_reads_back(pacs):
    from regionmir.dicomweb import DicomWebClient, InstanceReference
    from regionmir.search_report import read_structured_report

    film = pacs.films["p1"]
    answer = pacs.search({"sop_instance_uid": film.sop_uid, "anatomy": "right lung", "k": "6", "export": "sr"})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    report = body["export"]["sr"]
    assert report["hits_included"] == 6 and report["hits_left_out"] == 0 and body["timings_ms"]["export"] > 0
    assert report["study_uid"] == film.study_uid  # the report belongs to the query's study
    found = requests.get(
        pacs.orthanc.dicomweb_url + "/instances",
        params={"SOPInstanceUID": report["sop_instance_uid"], "includefield": "00080060"},
        headers={"Accept": "application/dicom+json"},
        timeout=30,
    ).json()
    assert len(found) == 1 and found[0]["00080060"]["Value"] == ["SR"]
    reference = InstanceReference(
        pacs.orthanc.dicomweb_url, report["study_uid"], report["series_uid"], report["sop_instance_uid"]
    )
    assert report["retrieve_url"] == reference.retrieve_url
    sr = pydicom.dcmread(io.BytesIO(DicomWebClient(pacs.orthanc.dicomweb_url).retrieve(reference)))
    assert str(sr.PatientID) == film.patient_id  # the query patient's report, in their study
    query, hits = read_structured_report(sr)
    assert query.sop_instance_uid == film.sop_uid and query.anatomy == "right lung"
    assert query.box == pytest.approx(tuple(body["query"]["box"]), abs=1e-3)
    assert [h.rank for h in hits] == [1, 2, 3, 4, 5, 6]
    for hit, result in zip(hits, body["results"], strict=True):
        assert hit.key == result["key"] and hit.anatomy == result["anatomy"]
        assert hit.sop_instance_uid == result["dicom"]["sop_instance_uid"]
        assert hit.study_instance_uid == result["dicom"]["study_uid"]
        assert hit.box == pytest.approx(tuple(result["box"]), abs=1e-3)
        assert hit.score == pytest.approx(result["score"])
    # the report is no radiograph: a study query still resolves to the film, not to the SR
    again = pacs.search({"study_uid": film.study_uid, "box": "30,30,100,120", "k": "1"})
    assert again.status_code == 200 and again.json()["query"]["dicom"]["sop_instance_uid"] == film.sop_uid


@integration
def test_pacs_query_errors_are_named(pacs):
    film = pacs.films["p4"]
    upload = ("film.dcm", pacs.films["uploaded"].data, "application/dicom")
    _error(pacs.search({"study_uid": "1.2.abc", "box": "1,1,50,50"}), 422, "bad_uid")
    _error(pacs.search({"sop_instance_uid": "1." * 40, "box": "1,1,50,50"}), 422, "bad_uid")  # over 64 characters
    _error(pacs.search({"series_uid": film.series_uid, "box": "1,1,50,50"}), 422, "missing_field")
    _error(pacs.search({"sop_instance_uid": "1.2.3.4.5", "box": "1,1,50,50"}), 404, "not_in_pacs")
    _error(pacs.search({"study_uid": "1.2.3.4.5", "box": "1,1,50,50"}), 404, "not_in_pacs")
    other = pacs.films["p1"]  # a real instance named in another study
    _error(
        pacs.search({"study_uid": film.study_uid, "sop_instance_uid": other.sop_uid, "box": "1,1,50,50"}),
        404,
        "not_in_pacs",
    )
    lateral = pacs.films["only_lateral"]
    error = _error(pacs.search({"study_uid": lateral.study_uid, "box": "1,1,50,50"}), 404, "no_frontal_instance")
    assert lateral.study_uid in error["message"]
    _error(
        pacs.search({"study_uid": film.study_uid, "box": "1,1,50,50"}, files={"image": upload}),
        422,
        "image_and_reference",
    )
    _error(pacs.search({"box": "1,1,50,50", "export": "sr"}, files={"image": upload}), 422, "export_needs_pacs_query")
    _error(pacs.search({"study_uid": film.study_uid, "box": "1,1,50,50", "export": "pdf"}), 422, "bad_export")
    _error(pacs.search({"box": "1,1,50,50"}), 422, "missing_field")
    _error(pacs.search({"study_uid": film.study_uid, "box": "1,1,50,50"}, headers={}), 401, "unauthorized")
    assert pacs.search({"study_uid": film.study_uid, "box": "1,1,50,50", "k": "1"}).status_code == 200


@integration
def test_a_pacs_that_is_down_is_a_503_and_the_service_stays_up(pacs):
    film = pacs.films["p1"]
    upload = {"image": ("film.dcm", pacs.films["uploaded"].data, "application/dicom")}
    keys = {}  # one result key per indexed film
    for hit in pacs.search({"box": "20,20,140,140", "k": "8", "group_by": "image"}, files=upload).json()["results"]:
        keys.setdefault(hit["image_id"], hit["key"])
    assert len(keys) == 8
    pacs.orthanc.kill()
    try:
        down = pacs.search({"study_uid": film.study_uid, "box": "30,30,100,120"})
        _error(down, 503, "pacs_unavailable")
        assert int(down.headers["retry-after"]) > 0
        _error(pacs.search({"sop_instance_uid": film.sop_uid, "box": "30,30,100,120"}), 503, "pacs_unavailable")
        assert pacs.get("/healthz").status_code == 200
        searched = pacs.search({"box": "30,30,100,120", "k": "3"}, files=upload)
        assert searched.status_code == 200 and searched.json()["results"][0]["dicom"]  # hits still name their UIDs
        # result films: a few are in the replica's film cache, the others cannot be read now
        statuses = []
        for key in keys.values():
            image = pacs.get(f"/v1/results/{key}/image")
            statuses.append(image.status_code)
            if image.status_code != 200:
                _error(image, 503, "pacs_unavailable")
                assert image.headers["retry-after"]
        assert 503 in statuses, statuses
    finally:
        pacs.orthanc.start()
    assert pacs.search({"study_uid": film.study_uid, "box": "30,30,100,120"}).status_code == 200
    assert all(pacs.get(f"/v1/results/{key}/image").status_code == 200 for key in keys.values())


@integration
def test_a_pacs_connected_index_is_never_served_without_an_api_key(pacs, monkeypatch, capsys):
    """The start refuses it: before Ray for a configured PACS (--insecure-dev or not), at readiness
    for an index of PACS instances; a front door that came up anyway answers no PACS data."""
    from ray import serve

    from serving.cli import serve_main
    from serving.deployments import app_builder, start_service

    for name in ("REGIONMIR_API_KEY", "REGIONMIR_API_KEY_FILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("REGIONMIR_SERVE__PACS__DICOMWEB_URL", pacs.orthanc.dicomweb_url)
    assert serve_main(["--model", "m", "--milvus", "x.db", "--insecure-dev"]) == 2  # refused before Ray starts
    err = capsys.readouterr().err
    assert "refusing to start" in err and "pacs.dicomweb_url" in err and "--insecure-dev does not waive" in err
    with pytest.raises(ConfigError, match="pacs.dicomweb_url"):
        app_builder({"model": "m", "milvus": "x.db", "insecure_dev": True})
    monkeypatch.delenv("REGIONMIR_SERVE__PACS__DICOMWEB_URL")

    # no pacs.dicomweb_url, no key, but the index's films are PACS instances: readiness refuses
    settings = ServeSettings.from_dict(
        {
            "model": pacs.model,
            "milvus": pacs.milvus,
            "http": {"host": "127.0.0.1", "port": int(pacs.base.rsplit(":", 1)[1])},
            "ingress": {"min_replicas": 1, "max_replicas": 1},
        }
    )
    started = time.perf_counter()
    with pytest.raises(ConfigError, match="PACS instances"):
        start_service(settings, backend_app="regionmir", route_prefix="/open", app_name="regionmir-open")
    assert time.perf_counter() - started < 120  # refused, not waited on for ready_timeout_s
    try:
        open_door = pacs.base + "/open"
        ready = requests.get(open_door + "/readyz", timeout=30)
        assert ready.status_code == 503 and ready.json()["checks"]["index"]["reason"] == "pacs_requires_api_key"
        upload = {"image": ("film.dcm", pacs.films["uploaded"].data, "application/dicom")}
        _error(
            pacs.search({"box": "30,30,100,120"}, files=upload, headers={}, base=open_door),
            503,
            "pacs_requires_api_key",
        )
        key = pacs.search({"box": "30,30,100,120", "k": "1"}, files=upload).json()["results"][0]["key"]
        for route in ("image", "crop", "dicom"):
            _error(pacs.get(f"/v1/results/{key}/{route}", headers={}, base=open_door), 503, "pacs_requires_api_key")
    finally:
        serve.delete("regionmir-open")


@integration
def test_the_page_loads_a_film_by_its_uid_and_links_hits_to_the_viewer(pacs, tmp_path):
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: apt-get install chromium (never download a browser)")
    from playwright.sync_api import sync_playwright

    film = pacs.films["a_frontal"]
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"]
        )
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.on("dialog", lambda dialog: dialog.accept(API_KEY))
            page.set_default_timeout(120_000)
            page.goto(pacs.base + "/")
            page.wait_for_function("document.querySelectorAll('#anatomy option').length > 10")
            page.fill("#uid", film.study_uid)
            page.click("#loaduid")
            page.wait_for_function(f"document.getElementById('status').textContent.includes('{SIZE} × {SIZE}')")
            page.select_option("#anatomy", "left lung")
            page.locator("#k").fill("4")
            page.click("#search")
            page.wait_for_function("document.querySelectorAll('#results .result').length === 4")
            assert film.sop_uid in page.locator("#query").inner_text()  # the study's frontal film was searched
            links = page.locator("#results .result a.open")
            assert links.count() == 4
            hrefs = [links.nth(i).get_attribute("href") for i in range(4)]
            assert all(h.startswith("http://viewer.example/viewer?StudyInstanceUIDs=1.") for h in hrefs), hrefs
            assert links.first.get_attribute("target") == "_blank"
            page.screenshot(path=str(tmp_path / "regionmir_page_pacs.png"), full_page=True)
            page.close()
        finally:
            browser.close()


@integration
def test_no_patient_identifier_reaches_logs_or_metric_labels(pacs):
    """Names (``PHANTOM^…``), patient ids and accession numbers of every film stored or uploaded:
    in none of the service's Ray session logs (replicas, Serve, the proxy), the index job's output,
    or the service's metric series. UIDs may appear in logs; never in metric labels."""
    import ray

    # its own searches first, so it stands alone (-k, any order): by UID, by upload, an unknown UID, a result's UIDs
    for film in ("p1", "p2", "p4", "a_pa"):
        answer = pacs.search({"sop_instance_uid": pacs.films[film].sop_uid, "anatomy": "left lung", "k": "3"})
        assert answer.status_code == 200, answer.text
    key = answer.json()["results"][0]["key"]
    assert pacs.get(f"/v1/results/{key}/dicom").status_code == 200
    upload = ("film.dcm", pacs.films["uploaded"].data, "application/dicom")
    assert pacs.search({"box": "10,10,60,80"}, files={"image": upload}).status_code == 200
    _error(pacs.search({"sop_instance_uid": "1.2.3.4.5", "box": "1,1,50,50"}), 404, "not_in_pacs")

    films = list(pacs.films.values())
    secrets = {f.patient_name for f in films} | {f.patient_id for f in films} | {f.accession for f in films}
    assert all(len(s) >= 8 for s in secrets)
    pattern = re.compile("|".join(rf"(?<![0-9]){re.escape(s)}(?![0-9])" for s in secrets) + "|PHANTOM")

    logs = Path(ray._private.worker._global_node.get_logs_dir_path())
    searches = 0
    for path in sorted(logs.rglob("*")):
        if path.is_file() and path.suffix in (".log", ".out", ".err", ".txt", ""):
            text = path.read_text(errors="replace")
            searches += text.count("search: film=pacs")
            found = pattern.search(text)
            assert found is None, f"{path}: {text[max(0, found.start() - 200) : found.end() + 200]}"
    assert searches >= 4  # the replicas' own lines of this test's searches were among those read
    assert pattern.search(pacs.index_output) is None

    wanted = ('reason="not_in_pacs"', 'endpoint="/v1/results/{key}/dicom"')
    deadline, text = time.monotonic() + 90, ""
    while time.monotonic() < deadline:
        try:
            text = requests.get(f"http://127.0.0.1:{pacs.metrics_port}/metrics", timeout=10).text
        except requests.RequestException:
            text = ""
        if all(w in text for w in wanted):
            break
        time.sleep(3)
    ours = "\n".join(line for line in text.splitlines() if "regionmir_serve" in line)
    assert all(w in ours for w in wanted), ours[-2000:]
    assert pattern.search(ours) is None
    uids = {f.study_uid for f in films} | {f.sop_uid for f in films} | {f.series_uid for f in films}
    assert not [uid for uid in uids if uid in ours]
