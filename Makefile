# Two commands: `make demo` and `make test`. Both build .venv from nothing and reuse it when current.
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed
PY := $(VENV)/bin/python
DEMO_OUT ?= demo-output

.PHONY: demo test test-slow test-faults test-ray test-cluster test-pacs venv clean lint format system-deps

venv: $(STAMP)

# torch/torchvision are installed first, pinned, so no resolver ever picks another build.
$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade "pip>=24"
	$(PY) -m pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

# Real servers the tests start: Chromium (the web-page test), Prometheus and the Orthanc PACS with its
# DICOMweb plugin (tests/orthanc_server.py), from Debian. Where installing orthanc starts its packaged
# daemon (port 8042; systemd, or an init script allowed by policy-rc.d), a fresh install is stopped and
# disabled again: by systemd, or by the init script's pid file only (`service orthanc stop` without
# systemd would SIGTERM every /usr/sbin/Orthanc on the machine, the tests' own included).
ORTHANC_DICOMWEB = /usr/share/orthanc/plugins/libOrthancDicomWeb.so
system-deps:
	@if ! command -v chromium >/dev/null || ! command -v prometheus >/dev/null || ! command -v promtool >/dev/null \
	    || [ ! -x /usr/sbin/Orthanc ] || [ ! -f $(ORTHANC_DICOMWEB) ]; then \
	  if [ "$$(id -u)" = 0 ]; then sudo=; else sudo=sudo; fi; \
	  dpkg-query -W -f='$${Status}' orthanc 2>/dev/null | grep -q "ok installed" && new_orthanc= || new_orthanc=1; \
	  echo "installing Debian packages chromium prometheus orthanc orthanc-dicomweb"; \
	  $$sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$sudo apt-get install -y -qq --no-install-recommends \
	    chromium prometheus orthanc orthanc-dicomweb || exit 1; \
	  if [ -n "$$new_orthanc" ] && [ -d /run/systemd/system ]; then \
	    $$sudo systemctl disable --now orthanc || true; \
	  elif [ -n "$$new_orthanc" ] && [ -f /run/orthanc.pid ]; then \
	    $$sudo start-stop-daemon --stop --quiet --oknodo --retry=TERM/10/KILL/5 --pidfile /run/orthanc.pid \
	      --exec /usr/sbin/Orthanc || true; \
	    $$sudo rm -f /run/orthanc.pid; \
	    $$sudo update-rc.d orthanc disable >/dev/null 2>&1 || true; \
	  fi; \
	fi

test: $(STAMP) system-deps lint
	$(PY) -m pytest -q

# The layering contracts (import-linter), ruff's lint rules and its formatting; `make format` fixes the last.
lint: $(STAMP)
	$(VENV)/bin/lint-imports pyproject.toml
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

# Ray Train integration and fault tests: minutes each on a 2-core machine.
test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow

# Fault and roll-out tests: Milvus SIGKILLed under the query service, a new model indexed under a
# running service, `regionmir index` losing S3 or SIGKILLed mid-job and re-run, a re-index after
# films left the data, the crop cache refusing to be marked complete short of rows, and the query
# service's split topology answering as the in-process pipeline (about 6 minutes on 2 cores; CI
# runs them too).
test-faults: $(STAMP)
	$(PY) -m pytest -q -m slow tests/test_serving_faults.py tests/test_rollout.py tests/test_index_faults.py \
	  tests/test_crop_cache.py tests/test_ingress_index.py tests/test_serving_split.py

# Ray Train and Ray Data end to end: two workers pretrain from S3 and fine-tune from that checkpoint,
# a killed worker resumes, the ablation grid, index + evaluate (about 7 minutes on 2 cores; CI
# runs them too).
test-ray: $(STAMP)
	$(PY) -m pytest -q -m slow tests/test_training_ray.py tests/test_index_evaluate.py

# A 3-node Ray cluster on this machine (head + 2 worker nodes): distributed pretraining across the
# worker nodes survives one of them being killed (about 2 minutes on 2 cores; CI runs it too).
test-cluster: $(STAMP)
	$(PY) -m pytest -q -m slow tests/test_multinode_cluster.py

# The PACS end to end against a real Orthanc: `regionmir index --data dicomweb+…` through Ray (labels
# keyed by SOP Instance UID, the real CR film localised, a second ingest adding only new instances,
# the PACS down) (about a minute on 2 cores; CI runs it too).
test-pacs: $(STAMP) system-deps
	$(PY) -m pytest -q -m slow tests/test_pacs_index.py

# `make demo SERVE=1` keeps the query service up at the end (Ctrl-C stops it).
demo: $(STAMP)
	$(PY) -m demo --out $(DEMO_OUT)$(if $(SERVE), --keep-serving)

clean:
	rm -rf $(DEMO_OUT) .pytest_cache
