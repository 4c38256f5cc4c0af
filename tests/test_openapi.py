"""The query service's HTTP API as ``/openapi.json`` (and so ``/docs``) declares it: the fields of
``POST /v1/search``, the schema of its answer, every error reason of ``serving/errors.py`` under its
status; and real answers of the app (in this process, through Starlette's test client, the
in-process backend over a real milvus-lite file) checked against those schemas."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.integration

SEARCH_FIELDS = (
    "image",
    "study_uid",
    "series_uid",
    "sop_instance_uid",
    "box",
    "anatomy",
    "k",
    "filter_anatomy",
    "view",
    "exclude_same_patient",
    "group_by",
    "export",
)
HIT_FIELDS = {
    "rank",
    "score",
    "anatomy",
    "image_id",
    "box",
    "view",
    "key",
    "crop_url",
    "image_url",
    "box_source",
    "dicom",
}


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    from random_model_index import in_process_service

    with in_process_service(tmp_path_factory.mktemp("openapi"), images=8, seed=4) as client:
        client.openapi = client.get("/openapi.json").json()
        yield client


def _resolve(spec: dict, schema: dict) -> dict:
    """``schema`` with a top-level ``$ref`` followed into ``components``."""
    while "$ref" in schema:
        schema = spec["components"]["schemas"][schema["$ref"].rsplit("/", 1)[-1]]
    return schema


def _search(client, film, **fields):
    with open(film.image_uri, "rb") as f:
        return client.post(
            "/v1/search",
            files={"image": ("film.dcm", f.read(), "application/dicom")},
            data={k: str(v) for k, v in fields.items()},
        )


def test_search_declares_its_form_fields(service):
    spec = service.openapi
    body = spec["paths"]["/v1/search"]["post"]["requestBody"]
    schema = _resolve(spec, body["content"]["multipart/form-data"]["schema"])
    assert set(SEARCH_FIELDS) <= set(schema["properties"]), sorted(schema["properties"])
    for name in SEARCH_FIELDS:
        assert schema["properties"][name].get("description"), name
    # image or a PACS reference (one of them), box or anatomy (at least one): checked by the service
    assert "required" not in schema
    preview = spec["paths"]["/v1/preview"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert {"image", "study_uid", "series_uid", "sop_instance_uid"} <= set(_resolve(spec, preview)["properties"])
    crop = {p["name"]: p for p in spec["paths"]["/v1/results/{key}/crop"]["get"]["parameters"]}
    assert crop["key"]["in"] == "path" and crop["size"]["in"] == "query" and crop["size"]["description"]


def test_search_answer_has_a_schema_with_the_result_fields(service):
    spec = service.openapi
    ok = spec["paths"]["/v1/search"]["post"]["responses"]["200"]["content"]["application/json"]["schema"]
    answer = _resolve(spec, ok)
    assert {"query", "results", "timings_ms"} <= set(answer["properties"])
    hit = _resolve(spec, answer["properties"]["results"]["items"])
    assert set(hit["properties"]) >= HIT_FIELDS
    query = _resolve(spec, answer["properties"]["query"])
    assert {"box", "box_source", "predicted_anatomy", "confidence", "filters", "localization"} <= set(
        query["properties"]
    )
    for path, method in [("/v1/anatomies", "get"), ("/healthz", "get"), ("/readyz", "get")]:
        assert "$ref" in spec["paths"][path][method]["responses"]["200"]["content"]["application/json"]["schema"]
    for path in ("/v1/results/{key}/crop", "/v1/results/{key}/image"):
        assert "image/png" in spec["paths"][path]["get"]["responses"]["200"]["content"]
    assert {"application/json", "text/csv"} <= set(spec["paths"]["/v1/search"]["post"]["responses"]["200"]["content"])
    assert {"dicom", "export"} <= set(answer["properties"]) | set(query["properties"])
    dicom = spec["paths"]["/v1/results/{key}/dicom"]["get"]["responses"]["200"]["content"]["application/json"]
    assert set(_resolve(spec, dicom["schema"])["properties"]) == {
        "study_uid",
        "series_uid",
        "sop_instance_uid",
        "retrieve_url",
        "viewer_url",
    }


def test_every_error_reason_is_documented_under_its_status(service):
    from serving.errors import ANSWERS, REASONS, STATUS_BY_REASON

    spec = service.openapi
    documented: set[tuple[str, int]] = set()
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            for status, response in operation["responses"].items():
                if not status.startswith(("4", "5")) or path == "/readyz":
                    continue
                schema = response["content"]["application/json"]["schema"]
                assert schema["$ref"].endswith("/ErrorBody"), (method, path, status)
                listed = [r for r in REASONS if f"`{r}`:" in response["description"]]
                assert listed, (method, path, status)  # every error status names its reasons
                for reason in listed:
                    assert int(status) in ANSWERS[reason].statuses, (method, path, status, reason)
                    documented.add((reason, int(status)))
    wanted = {(reason, status) for reason, answer in ANSWERS.items() for status in answer.statuses}
    assert wanted - documented == set()
    assert set(REASONS) == set(ANSWERS)
    for reason, status in STATUS_BY_REASON.items():  # the library's table and the docs agree
        assert ANSWERS[reason].statuses == (status,)
    # FastAPI's own 422 shape is never what a route documents
    assert "HTTPValidationError" not in spec["components"]["schemas"]


def test_real_answers_match_their_schemas(service):
    from serving.schemas import AnatomiesResponse, ErrorBody, HealthResponse, ReadyResponse, SearchResponse

    def exactly(model, body: dict) -> None:
        # every key of the answer is a field of the model, with a value of its type
        assert model.model_validate(body).model_dump(mode="json", exclude_unset=True) == body

    film = service.films[0]
    box = ",".join(str(v) for v in film.regions[0].box.as_list())
    by_box = _search(service, film, box=box, k=4, view="PA", group_by="study")
    assert by_box.status_code == 200, by_box.text
    exactly(SearchResponse, by_box.json())
    assert "localization" not in by_box.json()["query"]
    by_name = _search(service, film, anatomy="left lung", k=3)
    assert by_name.status_code == 200, by_name.text
    exactly(SearchResponse, by_name.json())
    assert by_name.json()["query"]["box_source"] == "atlas"
    exactly(AnatomiesResponse, service.get("/v1/anatomies").json())
    exactly(HealthResponse, service.get("/healthz").json())
    exactly(ReadyResponse, service.get("/readyz").json())
    unknown = _search(service, film, anatomy="left lang")
    assert unknown.status_code == 422
    exactly(ErrorBody, unknown.json())
    assert unknown.json()["error"]["suggestions"]


@pytest.mark.parametrize(
    "request_kwargs, status, reason, message",
    [
        (
            {"data": {"box": "1,1,50,50"}},
            422,
            "missing_field",
            "send the radiograph as the multipart file field 'image'",
        ),
        ({"with_film": True, "data": {"box": "1,1,50,50", "k": "ten"}}, 422, "bad_k", "k must be an integer in 1..100"),
        ({"with_film": True, "data": {"box": "1,2,3"}}, 422, "bad_box", "box: expected 'x1,y1,x2,y2'"),
        (
            {"with_film": True, "data": {"view": "LATERAL", "box": "1,1,9,9"}},
            422,
            "bad_filter",
            "view must be PA or AP",
        ),
        ({"with_film": True, "data": {}}, 422, "missing_field", "give a 'box'"),
        ({"with_film": True, "data": {"box": "1," * 3000}}, 400, "bad_request", "malformed multipart body"),
        (
            {"content": b"garbage", "headers": {"content-type": "multipart/form-data"}},
            400,
            "bad_request",
            "malformed multipart body: Missing boundary",
        ),
        ({"json": {"box": "1,1,9,9"}}, 422, "missing_field", "multipart file field 'image'"),
        # a film named in the PACS instead of uploaded (this service has none: serving/pacs.py)
        ({"data": {"study_uid": "1.2.3", "box": "1,1,9,9"}}, 422, "no_pacs", "this service has no PACS"),
        ({"data": {"study_uid": "1.2.x", "box": "1,1,9,9"}}, 422, "bad_uid", "study_uid must be a DICOM UID"),
        ({"data": {"series_uid": "1.2.3", "box": "1,1,9,9"}}, 422, "missing_field", "series_uid needs its study_uid"),
        (
            {"with_film": True, "data": {"sop_instance_uid": "1.2.3", "box": "1,1,9,9"}},
            422,
            "image_and_reference",
            "not both",
        ),
        (
            {"with_film": True, "data": {"box": "1,1,9,9", "export": "sr"}},
            422,
            "export_needs_pacs_query",
            "query by study_uid",
        ),
        ({"with_film": True, "data": {"box": "1,1,9,9", "export": "pdf"}}, 422, "bad_export", "csv, sr"),
    ],
)
def test_declared_fields_keep_the_service_own_answers(service, request_kwargs, status, reason, message):
    """FastAPI binds the declared fields, the service's parsers still decide: their reason and
    message, never FastAPI's generic 422 body."""
    kwargs = dict(request_kwargs)
    if kwargs.pop("with_film", False):
        with open(service.films[0].image_uri, "rb") as f:
            kwargs["files"] = {"image": ("film.dcm", f.read(), "application/dicom")}
    answer = service.post("/v1/search", **kwargs)
    assert answer.status_code == status, answer.text
    error = answer.json()["error"]
    assert error["reason"] == reason and message in error["message"], error
    assert "detail" not in answer.json()


def test_result_crop_size_keeps_its_messages(service):
    film = service.films[0]
    key = _search(service, film, box=",".join(str(v) for v in film.regions[0].box.as_list()), k=1).json()["results"][0][
        "key"
    ]
    assert service.get(f"/v1/results/{key}/crop", params={"size": "64"}).status_code == 200
    for size, message in [("abc", "size must be an integer"), ("8", "size must lie in 16..512")]:
        answer = service.get(f"/v1/results/{key}/crop", params={"size": size})
        assert answer.status_code == 422 and answer.json()["error"] == {"reason": "bad_request", "message": message}


def test_csv_export_and_the_dicom_route_of_a_file_collection(service):
    """``export=csv`` answers any search as CSV; a file-collection row has no PACS instance
    (``dicom`` null in the hits, 404 ``not_dicom`` from ``/v1/results/{key}/dicom``)."""
    import csv
    import io

    film = service.films[0]
    box = ",".join(str(v) for v in film.regions[0].box.as_list())
    answer = _search(service, film, box=box, k=3, export="csv")
    assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(answer.text)))
    assert [r["role"] for r in rows] == ["query", "hit", "hit", "hit"] and rows[1]["rank"] == "1"
    assert rows[0]["sop_instance_uid"] == "" and len(rows[1]["key"]) == 32  # an upload, file-collection hits
    hits = _search(service, film, box=box, k=2).json()["results"]
    assert [(h["dicom"], h["box_source"]) for h in hits] == [(None, "label")] * 2
    missing = service.get(f"/v1/results/{hits[0]['key']}/dicom")
    assert missing.status_code == 404 and missing.json()["error"]["reason"] == "not_dicom"


def test_the_guard_refuses_before_the_body_is_read(service):
    """An unauthenticated or announced-oversized request is answered without one body byte read."""
    import asyncio

    app = service.build_app(auth={"api_key": "k3y"})

    async def call(headers: list[tuple[bytes, bytes]]) -> list[dict]:
        sent: list[dict] = []

        async def receive() -> dict:
            raise AssertionError("the guard read the body")

        async def send(message: dict) -> None:
            sent.append(message)

        scope = {"type": "http", "method": "POST", "path": "/v1/search", "root_path": "", "headers": headers}
        await app(scope, receive, send)
        return sent

    too_big = str(service.settings.max_upload_bytes + 1).encode()
    unauthorised = asyncio.run(call([(b"content-length", too_big)]))
    assert unauthorised[0]["status"] == 401
    oversized = asyncio.run(call([(b"authorization", b"Bearer k3y"), (b"content-length", too_big)]))
    assert oversized[0]["status"] == 413 and b"upload_too_large" in oversized[1]["body"]


def test_anatomy_only_search_localises_as_the_atlas_does(service):
    """The service runs the atlas's own localisation (``AnatomyAtlas.localize``, what
    ``localization_miou`` measures), scoring crops with the encoder's probabilities."""
    from regionmir.anatomy import anatomy_id
    from regionmir.image_reader import read_image

    film = service.films[1]
    pixels = read_image(film.image_uri).pixels
    cfg = service.settings.atlas
    columns = {int(a): i for i, a in enumerate(service.contract.class_anatomy_ids)}
    for name in ("left lung", "right costophrenic angle", "cardiac silhouette"):
        column = columns[anatomy_id(name)]
        expected = service.atlas.localize(
            name,
            pixels,
            lambda crops, c=column: service.encoder.forward(crops)["probabilities"][:, c],
            n=cfg.candidates,
            rounds=cfg.rounds,
            crop=service.contract.crop_config,
            prior_weight=cfg.prior_weight,
        )
        answer = _search(service, film, anatomy=name, k=1)
        assert answer.status_code == 200, answer.text
        query = answer.json()["query"]
        assert query["box"] == [round(float(v), 2) for v in expected.box.as_list()], name
        assert query["localization"]["confidence"] == round(expected.confidence, 4), name
