"""The commands on object storage: synth writes to s3://, scan and inspect read from it."""

from __future__ import annotations

import json

import pytest

from regionmir.cli import main

pytestmark = pytest.mark.integration


@pytest.fixture()
def s3_env(s3_server, monkeypatch):
    monkeypatch.setenv("REGIONMIR_S3_ENDPOINT", s3_server.endpoint_url)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    return s3_server


def test_synth_to_s3_then_scan_and_inspect(s3_env, tmp_path, capsys):
    root = s3_env.make_bucket("synth") + "/phantoms"
    assert main(["synth", "--out", root, "--images", "4", "--size", "96", "--seed", "5", "--quiet", "--preview"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["images"] == 4 and summary["preview"] == root + "/preview.png"
    fs = s3_env.filesystem()
    fs.invalidate_cache()
    graphs = fs.glob(root.split("://", 1)[1] + "/silver_dataset/scene_graph/*.json")
    assert len(graphs) == 4

    assert main(["scan", root]) == 0
    printed = capsys.readouterr().out
    assert "regions: 144" in printed  # 4 films x 36 regions, nothing skipped

    image = "s3://" + fs.glob(root.split("://", 1)[1] + "/images/files/*/*/*/*.png")[0]
    out = tmp_path / "film.png"
    assert main(["inspect", image, "--png", str(out)]) == 0
    assert "96 x 96 px" in capsys.readouterr().out
    assert out.stat().st_size > 100


def test_scan_reports_a_missing_dataset_clearly(s3_env, capsys):
    root = s3_env.make_bucket("empty") + "/nothing-here"
    assert main(["scan", root]) == 2
    assert "nothing-here" in capsys.readouterr().err
