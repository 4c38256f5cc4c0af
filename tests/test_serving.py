"""The query service on Ray Serve, end to end on 127.0.0.1: phantom films indexed in milvus-lite by a
random-init encoder (``tests/random_model_index.py``, in a child process: the ``.db`` file belongs to the search
replica), one Serve application (encoder, search, ingress) plus a second front door with an API key
sharing the first one's encoder and index. Box and anatomy-only queries, every bad input (and a
good query right after each), auth, crops, metrics.

The settings files shipped in ``serving/`` (example config, Grafana dashboard, Prometheus alerts)
are checked without Ray.
"""

from __future__ import annotations

import io
import itertools
import json
import math
import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import requests
import yaml
from local_process import ahead_of_other_work, free_port
from PIL import Image

from regionmir.anatomy import ANATOMY_NAMES
from serving.config import ConfigError, ServeSettings

SERVING = Path(__file__).resolve().parent.parent / "serving"
API_KEY = "test-key-" + "7" * 24
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
integration = pytest.mark.integration


# --------------------------------------------------------------------------- settings files (no Ray)


def test_example_config_loads_and_environment_overrides(tmp_path):
    settings = ServeSettings.load(str(SERVING / "config.example.yaml"), env={})
    settings.validate()
    assert settings.encoder.max_batch_size <= settings.encoder.max_ongoing_requests
    env = {
        "REGIONMIR_API_KEY": "s3cret",
        "REGIONMIR_SERVE__ENCODER__MAX_REPLICAS": "7",
        "REGIONMIR_SERVE__LIMITS__MAX_K": "20",
        "REGIONMIR_SERVE__ENCODER__GPUS_PER_REPLICA": "0.5",
    }
    settings = ServeSettings.load(str(SERVING / "config.example.yaml"), env=env, overrides={"http.port": 9123})
    assert settings.auth.api_key == "s3cret" and settings.encoder.max_replicas == 7
    assert settings.limits.max_k == 20 and settings.http.port == 9123 and settings.encoder.gpus_per_replica == 0.5
    assert settings.redacted()["auth"]["api_key"] == "***" and "s3cret" not in json.dumps(settings.redacted())
    key_file = tmp_path / "key"
    key_file.write_text("from-file\n")
    assert ServeSettings.load(None, env={"REGIONMIR_API_KEY_FILE": str(key_file)}).auth.api_key == "from-file"
    (tmp_path / "c.json").write_text(json.dumps({"model": "m", "milvus": "x.db", "limits": {"max_k": 5}}))
    assert ServeSettings.load(str(tmp_path / "c.json"), env={}).limits.max_k == 5


def test_config_mistakes_are_named(tmp_path):
    (tmp_path / "typo.yaml").write_text("encoder:\n  max_replica: 3\n")
    with pytest.raises(ConfigError, match="encoder.max_replica"):
        ServeSettings.load(str(tmp_path / "typo.yaml"), env={})
    with pytest.raises(ConfigError, match="expected an integer"):
        ServeSettings.from_dict({"limits": {"max_k": "many"}})
    with pytest.raises(ConfigError, match="max_ongoing_requests"):
        ServeSettings.from_dict(
            {"model": "m", "milvus": "x.db", "encoder": {"max_batch_size": 64, "max_ongoing_requests": 8}}
        ).validate()
    with pytest.raises(ConfigError, match="milvus"):
        ServeSettings.from_dict({"model": "m", "milvus": "somewhere"}).validate()
    with pytest.raises(ConfigError, match="unknown setting"):
        ServeSettings.load(None, env={"REGIONMIR_SERVE__NOPE": "1"})


def test_grafana_dashboard_and_prometheus_alerts_parse():
    dashboard = json.loads((SERVING / "grafana_dashboard.json").read_text())
    assert dashboard["title"] and dashboard["panels"]
    expressions = " ".join(t["expr"] for p in dashboard["panels"] for t in p.get("targets", []))
    for name in (
        "ray_regionmir_serve_latency_seconds_bucket",
        "ray_regionmir_serve_queries_total",
        "ray_regionmir_serve_errors_total",
        "ray_regionmir_serve_encoder_batch_requests_bucket",
        "ray_regionmir_serve_index_rows",
    ):
        assert name in expressions
    alerts = yaml.safe_load((SERVING / "prometheus_alerts.yml").read_text())
    rules = [r for group in alerts["groups"] for r in group["rules"]]
    names = {r["alert"] for r in rules}
    assert {"RegionMIRHighErrorRate", "RegionMIRHighP99Latency", "RegionMIRNoHealthyReplicas"} <= names
    for rule in rules:
        assert rule["expr"].strip() and rule["labels"]["severity"] and rule["annotations"]["summary"]
    # Prometheus' own checker parses every PromQL expression (Debian package `prometheus`).
    promtool = shutil.which("promtool")
    assert promtool, "promtool missing: install the Debian package prometheus (make system-deps)"
    checked = subprocess.run(
        [promtool, "check", "rules", str(SERVING / "prometheus_alerts.yml")], capture_output=True, text=True, timeout=60
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"SUCCESS: {len(rules)} rules found" in checked.stdout


# --------------------------------------------------------------------------------- the service


@dataclass
class Service:
    base: str
    secure: str
    demo: dict
    metrics_port: int
    film: bytes

    def search(self, files=None, data=None, base=None, headers=None, **kw):
        return requests.post(
            (base or self.base) + "/v1/search", files=files, data=data, headers=headers, timeout=120, **kw
        )


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    import ray
    from random_model_index import build_random_model_index_subprocess
    from ray import serve

    from serving.deployments import start_service

    started = time.perf_counter()
    demo = build_random_model_index_subprocess(str(tmp_path_factory.mktemp("serve_demo")), images=6, size=160, seed=3)
    port, metrics_port = free_port(), free_port()
    common = {
        "model": demo["model"],
        "milvus": demo["milvus"],
        "http": {"host": "127.0.0.1", "port": port},
        "limits": {"max_upload_mb": 0.25, "max_pixels": 250_000, "max_k": 50},
        "encoder": {"min_replicas": 1, "max_replicas": 2, "max_batch_size": 8, "batch_wait_timeout_ms": 5},
        "ingress": {"min_replicas": 1, "max_replicas": 1},
        "ray": {"num_cpus": 6, "metrics_export_port": metrics_port},
    }
    # Serve throughput-optimised buffers 1000 log records per replica: write each at once, so the
    # privacy test reads every line the replicas logged
    buffered = os.environ.get("RAY_SERVE_REQUEST_PATH_LOG_BUFFER_SIZE")
    os.environ["RAY_SERVE_REQUEST_PATH_LOG_BUFFER_SIZE"] = "1"
    try:
        with ahead_of_other_work():
            base = start_service(ServeSettings.from_dict(common), ready_timeout_s=420)
            # the second door searches through the search replica, the first its own copy of the rows
            secure_settings = ServeSettings.from_dict(
                {**common, "auth": {"api_key": API_KEY}, "search": {"ingress_copy_max_rows": 0}}
            )
            secure = start_service(
                secure_settings,
                backend_app="regionmir",
                route_prefix="/secure",
                app_name="regionmir-secure",
                ready_timeout_s=300,
            )
        film = Path(demo["query_films"][0]).read_bytes()
        print(f"\n[test_serving] demo + Serve up in {time.perf_counter() - started:.0f} s at {base}")
        yield Service(base, secure, demo, metrics_port, film)
    finally:
        if ray.is_initialized():  # serve.shutdown() would start a Ray of its own otherwise
            serve.shutdown()
            ray.shutdown()
        if buffered is None:
            os.environ.pop("RAY_SERVE_REQUEST_PATH_LOG_BUFFER_SIZE", None)
        else:
            os.environ["RAY_SERVE_REQUEST_PATH_LOG_BUFFER_SIZE"] = buffered


def _png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def _assert_error(response: requests.Response, status: int, reason: str) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    error = response.json()["error"]
    assert error["reason"] == reason, error
    assert error["message"]
    return error


def _good_query(service: Service) -> dict:
    response = service.search(
        files={"image": ("film.png", service.film, "image/png")}, data={"box": "30,30,80,100", "k": "3"}
    )
    assert response.status_code == 200, response.text
    assert len(response.json()["results"]) == 3
    return response.json()


@integration
def test_health_and_readiness(service):
    assert requests.get(service.base + "/healthz", timeout=30).json() == {"status": "ok"}
    ready = requests.get(service.base + "/readyz", timeout=30)
    assert ready.status_code == 200
    checks = ready.json()["checks"]
    assert checks["model"]["loaded"] and checks["model"]["model_version"] == service.demo["model_version"]
    assert checks["index"]["rows"] == checks["index"]["model_rows"] == service.demo["rows"] > 0
    assert checks["atlas"]["loaded"]


@integration
def test_haproxy_answers_http_by_default(service):
    """``http.proxy: haproxy`` (the default): HAProxy listens in front of the replicas; its stats
    page is on the port this service's Ray was given (a free one, not HAProxy's fixed 8404)."""
    stats_port = int(os.environ["RAY_SERVE_HAPROXY_STATS_PORT"])
    assert stats_port != 8404
    stats = requests.get(f"http://127.0.0.1:{stats_port}/stats;csv", timeout=30)
    assert stats.status_code == 200 and stats.text.startswith("# pxname,svname"), stats.text[:200]
    assert requests.get(service.base + "/healthz", timeout=30).status_code == 200


@integration
def test_box_query_answers_with_results_and_crops(service):
    body = service.search(
        files={"image": ("film.png", service.film, "image/png")}, data={"box": "30,30,80,100", "k": "5"}
    ).json()
    query, results = body["query"], body["results"]
    assert query["box"] == [30, 30, 80, 100] and query["box_source"] == "user"
    assert query["predicted_anatomy"] in ANATOMY_NAMES and 0 <= query["confidence"] <= 1
    assert query["model_version"] == service.demo["model_version"]
    assert [r["rank"] for r in results] == [1, 2, 3, 4, 5]
    assert all(a["score"] >= b["score"] for a, b in itertools.pairwise(results))
    assert {"decode", "encode", "search", "total"} <= set(body["timings_ms"])
    first = results[0]
    assert first["anatomy"] in ANATOMY_NAMES and len(first["box"]) == 4 and first["image_id"]
    assert first["crop_url"] == f"/v1/results/{first['key']}/crop"
    crop = requests.get(service.base + first["crop_url"], timeout=60)
    assert crop.status_code == 200 and crop.headers["content-type"] == "image/png"
    assert crop.content.startswith(PNG_MAGIC) and Image.open(io.BytesIO(crop.content)).size == (192, 192)
    whole = requests.get(service.base + first["image_url"], timeout=60)
    assert whole.status_code == 200 and whole.content.startswith(PNG_MAGIC)
    assert Image.open(io.BytesIO(whole.content)).mode == "RGB"  # the box is drawn in colour

    filtered = service.search(
        files={"image": ("film.png", service.film, "image/png")},
        data={"box": "30,30,80,100", "k": "4", "filter_anatomy": "left lung"},
    ).json()
    assert [r["anatomy"] for r in filtered["results"]] == ["left lung"] * 4


@integration
def test_anatomy_only_query_is_localised_by_the_service(service):
    response = service.search(
        files={"image": ("film.png", service.film, "image/png")}, data={"anatomy": "left costophrenic angle", "k": "4"}
    )
    assert response.status_code == 200, response.text
    query = response.json()["query"]
    assert query["box_source"] == "atlas" and query["anatomy"] == "left costophrenic angle"
    x1, y1, x2, y2 = query["box"]
    assert 0 <= x1 < x2 <= 160 and 0 <= y1 < y2 <= 160
    assert x1 > 80  # the patient's left lies on the image's right
    assert query["localization"]["prior_box"] and "classifier" in query["localization"]["method"]
    assert len(response.json()["results"]) == 4
    # a box and a name: the box is the user's
    both = service.search(
        files={"image": ("film.png", service.film, "image/png")}, data={"anatomy": "heart", "box": "50,60,110,120"}
    ).json()
    assert both["query"]["box_source"] == "user" and both["query"]["anatomy"] == "cardiac silhouette"


@integration
def test_dicom_upload_previews_and_searches(service, tmp_path):
    from regionmir.synth.dataset_writer import write_phantom_dataset

    write_phantom_dataset(str(tmp_path), images=1, size=128, seed=11, fmt="dicom", progress=False)
    dicom = next(tmp_path.rglob("*.dcm")).read_bytes()
    preview = requests.post(service.base + "/v1/preview", files={"image": ("film.dcm", dicom)}, timeout=60)
    assert preview.status_code == 200 and preview.content.startswith(PNG_MAGIC)
    assert preview.headers["x-image-width"] == "128" and preview.headers["x-image-height"] == "128"
    response = service.search(
        files={"image": ("film.dcm", dicom, "application/dicom")}, data={"box": "10,10,60,70", "k": "2"}
    )
    assert response.status_code == 200, response.text


def _bad_cases(film: bytes) -> list[tuple[str, dict, int, str]]:
    big_png = _png(np.zeros((600, 600), np.uint8))  # 360 kpx > the 250 kpx limit, a few KB on the wire
    corrupt_dicom = b"\0" * 128 + b"DICM" + b"\x02\x00\x10\x00UI\x40\x00" + b"\xff" * 30
    image = ("film.png", film, "image/png")
    return [
        (
            "text instead of an image",
            {"files": {"image": ("x.png", b"hello world", "image/png")}, "data": {"box": "1,1,9,9"}},
            415,
            "unsupported_media_type",
        ),
        (
            "empty file",
            {"files": {"image": ("x.png", b"", "image/png")}, "data": {"box": "1,1,9,9"}},
            415,
            "unsupported_media_type",
        ),
        (
            "corrupt DICOM",
            {"files": {"image": ("x.dcm", corrupt_dicom)}, "data": {"box": "1,1,9,9"}},
            422,
            "unreadable_image",
        ),
        (
            "truncated PNG",
            {"files": {"image": ("x.png", film[: len(film) // 3])}, "data": {"box": "1,1,9,9"}},
            422,
            "unreadable_image",
        ),
        ("box outside", {"files": {"image": image}, "data": {"box": "100,100,200,150"}}, 422, "box_outside_image"),
        ("zero-area box", {"files": {"image": image}, "data": {"box": "10,10,10,50"}}, 422, "box_zero_area"),
        ("inverted box", {"files": {"image": image}, "data": {"box": "50,50,10,10"}}, 422, "box_inverted"),
        ("malformed box", {"files": {"image": image}, "data": {"box": "1,2,3"}}, 422, "bad_box"),
        ("non-numeric box", {"files": {"image": image}, "data": {"box": "a,b,c,d"}}, 422, "bad_box"),
        ("NaN box", {"files": {"image": image}, "data": {"box": "nan,1,20,20"}}, 422, "box_not_finite"),
        ("unknown anatomy", {"files": {"image": image}, "data": {"anatomy": "left lang"}}, 422, "unknown_anatomy"),
        (
            "unknown filter anatomy",
            {"files": {"image": image}, "data": {"box": "1,1,50,50", "filter_anatomy": "rigth lung"}},
            422,
            "unknown_anatomy",
        ),
        ("bad view", {"files": {"image": image}, "data": {"box": "1,1,50,50", "view": "LATERAL"}}, 422, "bad_filter"),
        ("k = 0", {"files": {"image": image}, "data": {"box": "1,1,50,50", "k": "0"}}, 422, "bad_k"),
        ("k over the limit", {"files": {"image": image}, "data": {"box": "1,1,50,50", "k": "51"}}, 422, "bad_k"),
        ("k not an integer", {"files": {"image": image}, "data": {"box": "1,1,50,50", "k": "2.5"}}, 422, "bad_k"),
        ("k not a number", {"files": {"image": image}, "data": {"box": "1,1,50,50", "k": "ten"}}, 422, "bad_k"),
        ("no image", {"data": {"box": "1,1,50,50"}}, 422, "missing_field"),
        (
            "a text field 'image' after the file",  # the last value of a field counts, as in FastAPI
            {"files": [("image", image), ("image", (None, "not a file"))], "data": {"box": "1,1,50,50"}},
            422,
            "missing_field",
        ),
        (
            "the box sent as a file (the film named by a PACS reference)",
            {"files": {"box": ("box.txt", b"1,1,50,50", "text/plain")}, "data": {"study_uid": "1.2.3"}},
            422,
            "bad_request",
        ),
        ("neither box nor anatomy", {"files": {"image": image}}, 422, "missing_field"),
        (
            "upload over the size limit",
            {"files": {"image": ("x.png", PNG_MAGIC + b"\0" * 300_000)}, "data": {"box": "1,1,9,9"}},
            413,
            "upload_too_large",
        ),
        (
            "film over the pixel limit",
            {"files": {"image": ("big.png", big_png, "image/png")}, "data": {"box": "1,1,50,50"}},
            413,
            "image_too_large",
        ),
        ("JSON instead of multipart", {"json": {"box": "1,1,9,9"}}, 422, "missing_field"),
        (
            "multipart without boundary",
            {"data": b"garbage", "headers": {"content-type": "multipart/form-data"}},
            400,
            "bad_request",
        ),
    ]


@integration
def test_every_bad_input_gets_its_4xx_and_the_service_stays_up(service):
    for name, kwargs, status, reason in _bad_cases(service.film):
        response = requests.post(service.base + "/v1/search", timeout=120, **kwargs)
        error = _assert_error(response, status, reason)
        if reason == "unknown_anatomy":
            assert error["suggestions"], name
        _good_query(service)  # the next good query still works

    # a chunked upload (no Content-Length) over the limit is cut off while it arrives
    def chunks():
        yield (
            b'--xyz\r\nContent-Disposition: form-data; name="image"; filename="big.png"\r\n'
            b"Content-Type: image/png\r\n\r\n"
        )
        for _ in range(40):
            yield b"\0" * 10_000
        yield b"\r\n--xyz--\r\n"

    chunked = requests.post(
        service.base + "/v1/search",
        data=chunks(),
        timeout=120,
        headers={"content-type": "multipart/form-data; boundary=xyz"},
    )
    _assert_error(chunked, 413, "upload_too_large")
    _assert_error(requests.get(service.base + "/v1/results/not-a-key/crop", timeout=30), 422, "bad_key")
    _assert_error(requests.get(service.base + "/v1/results/" + "0" * 32 + "/crop", timeout=30), 404, "not_found")
    _assert_error(requests.get(service.base + "/v1/nothing-here", timeout=30), 404, "not_found")
    _assert_error(requests.get(service.base + "/v1/search", timeout=30), 405, "method_not_allowed")
    _good_query(service)
    assert requests.get(service.base + "/healthz", timeout=30).status_code == 200


@integration
def test_auth_on_one_door_and_off_on_the_other(service):
    open_door = requests.get(service.base + "/v1/anatomies", timeout=30)
    assert open_door.status_code == 200 and len(open_door.json()["anatomies"]) == len(ANATOMY_NAMES)

    missing = requests.get(service.secure + "/v1/anatomies", timeout=30)
    _assert_error(missing, 401, "unauthorized")
    assert missing.headers["www-authenticate"].lower().startswith("bearer")
    wrong = requests.get(service.secure + "/v1/anatomies", headers={"Authorization": "Bearer nope"}, timeout=30)
    _assert_error(wrong, 401, "unauthorized")
    _assert_error(
        service.search(files={"image": ("f.png", service.film)}, data={"box": "30,30,80,100"}, base=service.secure),
        401,
        "unauthorized",
    )
    # a huge upload without the key is refused as unauthorised before its size matters
    _assert_error(service.search(files={"image": ("f.png", b"\0" * 400_000)}, base=service.secure), 401, "unauthorized")

    auth = {"Authorization": f"Bearer {API_KEY}"}
    assert requests.get(service.secure + "/v1/anatomies", headers=auth, timeout=30).status_code == 200
    found = service.search(
        files={"image": ("f.png", service.film)},
        data={"box": "30,30,80,100", "k": "2"},
        base=service.secure,
        headers=auth,
    )
    assert found.status_code == 200, found.text
    crop = requests.get(service.secure + found.json()["results"][0]["crop_url"], headers=auth, timeout=60)
    assert crop.status_code == 200 and crop.content.startswith(PNG_MAGIC)
    # health endpoints and the page need no key
    assert requests.get(service.secure + "/healthz", timeout=30).status_code == 200
    assert requests.get(service.secure + "/readyz", timeout=30).status_code == 200
    page = requests.get(service.secure + "/", timeout=30)
    assert page.status_code == 200 and "sessionStorage" in page.text


@integration
def test_the_ingress_searches_its_own_copy_of_the_rows_with_the_search_replicas_answers(service):
    """``topology: fused`` with a milvus-lite file: the first door's ingress copies the rows the
    search replica holds and answers searches itself (one hop fewer); the second door
    (``search.ingress_copy_max_rows: 0``) asks the search replica. Same hits, same scores."""
    deadline = time.monotonic() + 60
    while True:
        index = requests.get(service.base + "/readyz", timeout=30).json()["checks"]["index"]
        if index["searched_in"] == "ingress" or time.monotonic() > deadline:
            break
        _good_query(service)  # the copy is asked for on use
        time.sleep(1)
    assert index["searched_in"] == "ingress" and index["ingress_copy_rows"] == service.demo["rows"], index
    other = requests.get(service.secure + "/readyz", timeout=30).json()["checks"]["index"]
    assert other["searched_in"] == "search replica" and "ingress_copy_rows" not in other, other

    auth = {"Authorization": f"Bearer {API_KEY}"}
    for fields in (
        {"box": "30,30,80,100", "k": "8"},
        {"box": "30,30,80,100", "k": "5", "filter_anatomy": "left lung"},
        {"box": "20,40,90,120", "k": "6", "group_by": "study"},
        {"anatomy": "right hemidiaphragm", "k": "4"},
    ):
        answers = []
        for base, headers in ((service.base, {}), (service.secure, auth)):
            response = service.search(
                files={"image": ("film.png", service.film, "image/png")}, data=fields, base=base, headers=headers
            )
            assert response.status_code == 200, response.text
            answers.append([(r["key"], round(r["score"], 5)) for r in response.json()["results"]])
        assert answers[0] == answers[1] and answers[0], fields


@integration
def test_page_is_self_contained(service):
    page = requests.get(service.base + "/", timeout=30)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    html = page.text
    assert "<canvas" in html and "/v1/search" in html and "/v1/preview" in html
    for external in ('src="http', "src='http", 'href="http', "@import", "//cdn"):
        assert external not in html


@integration
def test_metrics_reach_the_ray_metrics_endpoint(service):
    _good_query(service)
    service.search(files={"image": ("film.png", service.film)}, data={"anatomy": "left lung", "k": "2"})
    service.search(files={"image": ("x.png", b"nope")}, data={"box": "1,1,9,9"})
    wanted = [
        "ray_regionmir_serve_latency_seconds_bucket",
        'stage="encode"',
        'stage="search"',
        "ray_regionmir_serve_queries_total",
        'anatomy="left lung"',
        "ray_regionmir_serve_errors_total",
        'reason="unsupported_media_type"',
        "ray_regionmir_serve_encoder_batch_requests",
        "ray_regionmir_serve_index_rows",
    ]
    deadline = time.monotonic() + 120
    text = ""
    while time.monotonic() < deadline:
        try:
            text = requests.get(f"http://127.0.0.1:{service.metrics_port}/metrics", timeout=10).text
        except requests.RequestException:
            text = ""
        if all(w in text for w in wanted):
            break
        time.sleep(3)
    missing = [w for w in wanted if w not in text]
    assert not missing, f"not exported: {missing}"
    ours = "\n".join(line for line in text.splitlines() if "regionmir_serve" in line)
    for record_image in service.demo["query_films"]:
        assert Path(record_image).stem not in ours  # no image ids in metric labels
    rows = [line for line in ours.splitlines() if line.startswith("ray_regionmir_serve_index_rows")]
    assert any(math.isclose(float(line.rsplit(" ", 1)[1]), service.demo["rows"]) for line in rows), rows


@integration
def test_a_prometheus_server_scrapes_the_search_latency_histogram(service, tmp_path):
    """A real Prometheus (Debian package) scrapes Ray's metrics endpoint; PromQL sees the histogram."""
    binary = shutil.which("prometheus")
    assert binary, "prometheus missing: install the Debian package prometheus (make system-deps)"
    for _ in range(3):
        _good_query(service)
    port = free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(
        yaml.safe_dump(
            {
                # 5 s: a scrape of Ray's endpoint can take seconds on a busy 2-core machine (timeout = interval)
                "global": {"scrape_interval": "5s", "scrape_timeout": "5s", "evaluation_interval": "5s"},
                "rule_files": [str(SERVING / "prometheus_alerts.yml")],
                "scrape_configs": [
                    {"job_name": "ray", "static_configs": [{"targets": [f"127.0.0.1:{service.metrics_port}"]}]}
                ],
            }
        )
    )
    log = open(tmp_path / "prometheus.log", "w")  # noqa: SIM115 (Prometheus writes to it while it runs)
    server = subprocess.Popen(
        [
            binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    api = f"http://127.0.0.1:{port}/api/v1"
    try:
        deadline, found, quantile = time.monotonic() + 150, [], []
        while time.monotonic() < deadline and not (found and quantile):
            assert server.poll() is None, (tmp_path / "prometheus.log").read_text()[-2000:]
            try:
                found = requests.get(
                    f"{api}/query",
                    timeout=5,
                    params={"query": 'ray_regionmir_serve_latency_seconds_bucket{stage="search"}'},
                ).json()["data"]["result"]
                quantile = requests.get(
                    f"{api}/query",
                    timeout=5,
                    params={
                        "query": "histogram_quantile(0.99, sum by (le, stage) "
                        '(ray_regionmir_serve_latency_seconds_bucket{stage="total"}))'
                    },
                ).json()["data"]["result"]
            except (requests.RequestException, KeyError, ValueError):
                found, quantile = [], []
            time.sleep(2)
        assert found, "Prometheus never scraped the search latency histogram"
        assert {series["metric"]["stage"] for series in found} == {"search"}
        assert any(float(series["value"][1]) > 0 for series in found)  # queries were counted
        assert quantile and float(quantile[0]["value"][1]) > 0  # a p99 of the total latency, in seconds
        health: list[str] = []
        for _ in range(12):  # the last scrape may have been slow: wait for one that succeeds
            health = [t["health"] for t in requests.get(f"{api}/targets", timeout=5).json()["data"]["activeTargets"]]
            if health == ["up"]:
                break
            time.sleep(5)
        assert health == ["up"], health
        rules = requests.get(f"{api}/rules", timeout=5).json()["data"]["groups"]
        assert {r["name"] for g in rules for r in g["rules"]} >= {"RegionMIRHighErrorRate", "RegionMIRHighP99Latency"}
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()


def test_serve_fails_closed_without_an_api_key_or_with_the_public_salt(monkeypatch, capsys):
    from regionmir.identifiers import DEFAULT_SALT
    from serving.cli import serve_main
    from serving.deployments import app_builder
    from serving.startup_checks import require_secure

    for name in ("REGIONMIR_API_KEY", "REGIONMIR_API_KEY_FILE", "REGIONMIR_ID_SALT"):
        monkeypatch.delenv(name, raising=False)
    assert serve_main(["--model", "m", "--milvus", "x.db"]) == 2  # refused before Ray starts
    err = capsys.readouterr().err
    assert "refusing to start" in err and "no API key" in err and "REGIONMIR_ID_SALT" in err
    assert "--insecure-dev" in err
    with pytest.raises(ConfigError, match="refusing to start"):  # the RayService entry too
        app_builder({"model": "m", "milvus": "x.db"})
    with pytest.raises(ConfigError, match="insecure_dev must be true or false"):  # "false" is truthy
        app_builder({"model": "m", "milvus": "x.db", "insecure_dev": "false"})
    with pytest.raises(ConfigError, match="film_wait_s"):
        ServeSettings.from_dict({"model": "m", "milvus": "x.db", "limits": {"film_wait_s": 0}}).validate()

    settings = ServeSettings.from_dict({"model": "m", "milvus": "x.db", "auth": {"api_key": API_KEY}})
    with pytest.raises(ConfigError, match="salt"):  # a key alone is not enough
        require_secure(settings, False, environ={"REGIONMIR_ID_SALT": DEFAULT_SALT})
    assert require_secure(settings, False, environ={"REGIONMIR_ID_SALT": "s3cret-" + "9" * 20}) == []
    problems = require_secure(ServeSettings.from_dict({"model": "m", "milvus": "x.db"}), True, environ={})
    assert len(problems) == 2  # --insecure-dev: warned, not refused


def test_the_film_cache_survives_threads():
    """The result routes read films in worker threads: the cache's bookkeeping must not race."""
    import threading

    from serving.film_cache import FilmCache

    cache, errors = FilmCache(4), []

    def load(uri: str) -> np.ndarray:
        return np.full((2, 2), float(uri), np.float32)

    def reader(seed: int) -> None:
        rng = np.random.default_rng(seed)
        try:
            for _ in range(2000):
                uri = str(int(rng.integers(0, 12)))
                assert cache.get(uri, load)[0, 0] == float(uri)
        except Exception as exc:  # noqa: BLE001 - any failure in a thread fails the test
            errors.append(exc)

    threads = [threading.Thread(target=reader, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(cache.items) <= 4


def test_no_patient_name_or_id_reaches_the_index_the_logs_or_the_metric_labels(service):
    """File mode: the data set's patient and study ids, and the name, id and accession number of an
    uploaded DICOM, appear in no indexed row (every row, read back through anatomy-filtered searches),
    no log file of the Ray session and no metric label."""
    import csv
    import io

    import pydicom
    import ray

    from regionmir.synth.dataset_writer import render_phantom

    secrets: set[str] = set()
    for split in Path(service.demo["data"], "silver_dataset", "splits").glob("*.csv"):
        for row in csv.DictReader(split.open()):
            secrets |= {row["subject_id"], row["study_id"]}
    data, _ = render_phantom(3, 99, 128, "dicom", "classic")
    ds = pydicom.dcmread(io.BytesIO(data))
    ds.PatientName, ds.PatientID, ds.AccessionNumber = "DOE^JANE^QUERYPATIENT", "MRN-93817265", "ACC-55512345"
    upload = io.BytesIO()
    ds.save_as(upload, enforce_file_format=True)
    uploaded = {"DOE^JANE^QUERYPATIENT", "QUERYPATIENT", "MRN-93817265", "ACC-55512345"}
    film = ("query.dcm", upload.getvalue(), "application/dicom")
    answers = []
    for options in ({"box": "20,20,70,90"}, {"anatomy": "left lung"}):
        answer = service.search(files={"image": film}, data={**options, "exclude_same_patient": "true", "k": "5"})
        assert answer.status_code == 200, answer.text
        answers.append(answer.text)
    assert requests.post(service.base + "/v1/preview", files={"image": film}, timeout=60).status_code == 200
    rows = 0
    for anatomy in ANATOMY_NAMES:  # every row of the index comes back under its own anatomy
        found = service.search(files={"image": film}, data={"box": "20,20,70,90", "filter_anatomy": anatomy, "k": "50"})
        assert found.status_code == 200, found.text
        rows += len(found.json()["results"])
        answers.append(found.text)
    assert rows == service.demo["rows"]
    leaked = [s for s in secrets | uploaded if any(s in text for text in answers)]
    assert not leaked, f"in answers (index rows): {leaked}"

    metrics = requests.get(f"http://127.0.0.1:{service.metrics_port}/metrics", timeout=30).text
    assert not [s for s in secrets | uploaded if s in metrics]
    logs = Path(ray._private.worker._global_node.get_session_dir_path()) / "logs"
    searches_logged = 0
    for path in logs.rglob("*"):
        if path.is_file() and path.suffix in (".log", ".out", ".err", ""):
            text = path.read_text(errors="ignore")
            searches_logged += text.count("search: film=upload")
            leaked = [s for s in secrets | uploaded if s in text]
            assert not leaked, f"{path.name}: {leaked}"
    assert searches_logged >= len(ANATOMY_NAMES)  # the replicas' lines of these searches were read
