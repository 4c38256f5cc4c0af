"""`regionmir` is the pure library: importing every module of it pulls in no Ray, no web
framework, no Milvus server glue and none of the layers built on it."""

from __future__ import annotations

import json
import subprocess
import sys

FORBIDDEN = ("ray", "fastapi", "starlette", "uvicorn", "pymilvus", "training", "serving", "grpc")

PROBE = """
import importlib, json, pkgutil, sys
import regionmir
names = [m.name for m in pkgutil.walk_packages(regionmir.__path__, "regionmir.")]
for name in names:
    importlib.import_module(name)
loaded = sorted({m.split(".")[0] for m in sys.modules})
print(json.dumps({"modules": names, "loaded": loaded}))
"""


def test_regionmir_imports_no_ray_web_or_server_code():
    result = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, check=True)
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert len(report["modules"]) > 20  # the probe really walked the package
    assert "regionmir.synth.phantom_film" in report["modules"]
    leaked = [m for m in report["loaded"] if m in FORBIDDEN]
    assert leaked == [], f"regionmir imported {leaked}"
