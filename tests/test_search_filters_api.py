"""``POST /v1/search`` with ``exclude_same_patient`` and ``group_by``: the query service's app in this
process (FastAPI through Starlette's test client, the in-process backend), a real milvus-lite file
and DICOM phantoms whose PatientID the index knows only as a salted hash."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    from random_model_index import in_process_service

    with in_process_service(tmp_path_factory.mktemp("filters"), images=10, seed=3) as client:
        yield client, [film for film in client.films if film.split == "train"]


def search(client, film, **fields):
    with open(film.image_uri, "rb") as f:
        return client.post(
            "/v1/search",
            files={"image": ("film.dcm", f.read(), "application/dicom")},
            data={k: str(v) for k, v in fields.items()},
        )


def test_exclude_same_patient_leaves_out_the_uploaded_patient(service):
    client, train = service
    film = train[0]
    region = film.regions[0]
    box = ",".join(str(v) for v in region.box.as_list())
    plain = search(client, film, box=box, k=10)
    assert plain.status_code == 200, plain.text
    assert plain.json()["results"][0]["image_id"] == film.image_id  # the film itself is indexed: found first

    excluded = search(client, film, box=box, k=10, exclude_same_patient="true")
    assert excluded.status_code == 200, excluded.text
    body = excluded.json()
    assert body["query"]["filters"]["exclude_same_patient"] is True
    assert len(body["results"]) == 10
    assert film.image_id not in {r["image_id"] for r in body["results"]}
    assert "patient" not in str(body["results"][0].keys())  # no patient field, hashed or not, in the answer


def test_group_by_study_keeps_the_best_region_of_each_study(service):
    client, train = service
    film = train[1]
    box = ",".join(str(v) for v in film.regions[3].box.as_list())
    everything = search(client, film, box=box, k=100).json()["results"]
    grouped = search(client, film, box=box, k=5, group_by="study")
    assert grouped.status_code == 200, grouped.text
    body = grouped.json()
    assert body["query"]["filters"]["group_by"] == "study"
    first_of_each: dict[str, str] = {}
    for hit in everything:  # one study per phantom film
        first_of_each.setdefault(hit["image_id"], hit["key"])
    assert [r["key"] for r in body["results"]] == list(first_of_each.values())[:5]
    assert len({r["image_id"] for r in body["results"]}) == 5
    assert len({r["image_id"] for r in everything[:5]}) < 5  # without grouping one film fills the top 5


@pytest.mark.parametrize(
    "fields, reason",
    [
        ({"exclude_same_patient": "maybe"}, "bad_filter"),
        ({"group_by": "hospital"}, "bad_filter"),
    ],
)
def test_bad_filter_values_are_422_and_name_the_field(service, fields, reason):
    client, train = service
    box = ",".join(str(v) for v in train[0].regions[0].box.as_list())
    answer = search(client, train[0], box=box, **fields)
    assert answer.status_code == 422
    assert answer.json()["error"]["reason"] == reason and list(fields)[0] in answer.json()["error"]["message"]


def test_exclusion_without_a_patient_in_the_upload_is_refused(service, tmp_path):
    import io

    import numpy as np
    from PIL import Image

    client, train = service
    buffer = io.BytesIO()
    Image.fromarray((np.random.default_rng(0).random((160, 160)) * 255).astype(np.uint8)).save(buffer, format="PNG")
    answer = client.post(
        "/v1/search",
        files={"image": ("film.png", buffer.getvalue(), "image/png")},
        data={"box": "20,20,80,80", "exclude_same_patient": "1"},
    )
    assert answer.status_code == 422 and answer.json()["error"]["reason"] == "no_patient_id"
    assert client.get("/healthz").status_code == 200


def test_a_service_whose_salt_does_not_open_the_film_locations_is_not_ready(service, monkeypatch):
    """The index job sealed the films' locations with its salt; a service given another one could
    search but never show a film: /readyz says so, and a result film answers a named error."""
    client, train = service
    assert client.get("/readyz").status_code == 200
    hit = search(client, train[0], box=",".join(str(v) for v in train[0].regions[0].box.as_list()), k=1).json()
    monkeypatch.setenv("REGIONMIR_ID_SALT", "not the index job's salt")
    client.search_runtime._locations_open = False  # checked once already; a replica starting now would see this
    ready = client.get("/readyz")
    assert ready.status_code == 503 and "REGIONMIR_ID_SALT" in ready.json()["checks"]["index"]["problem"]
    film = client.get(f"/v1/results/{hit['results'][0]['key']}/image")
    assert film.status_code == 500 and film.json()["error"]["reason"] == "sealed_location"
