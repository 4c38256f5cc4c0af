"""A real Orthanc PACS (Debian packages ``orthanc`` and ``orthanc-dicomweb``) for tests.

:class:`OrthancServer` writes its config into the folder it is given, runs ``Orthanc`` on a free
127.0.0.1 port with the DICOMweb plugin (``/dicom-web``; no DICOM network server, no WADO-URI, no
authentication, local access only) and keeps its files in ``folder/storage``. ``kill()`` SIGKILLs it
(the PACS is down); ``start()`` again brings it back on the same port and storage. Used as a context
manager it is started on entry and stopped on exit.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import requests
from local_process import free_port

ORTHANC_BINARY = Path("/usr/sbin/Orthanc")
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")


def _log_tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


class OrthancServer:
    """An Orthanc process under test.

    ``folder`` holds ``orthanc.json`` (the config), ``storage/`` (DICOM files and the SQLite index)
    and one log per start (``orthanc-1.log``, ``orthanc-2.log``, …: Orthanc's stdout and stderr).
    ``port`` is chosen once, so a restart answers at the same :attr:`url`."""

    #: How long a start waits for ``GET /system``, and how long a stop waits after SIGTERM.
    start_timeout_s = 30.0
    stop_grace_s = 10.0

    def __init__(self, folder: Path | str, port: int | None = None):
        for path, package in ((ORTHANC_BINARY, "orthanc"), (DICOMWEB_PLUGIN, "orthanc-dicomweb")):
            if not path.exists():
                raise RuntimeError(f"{path} missing: `make system-deps` installs it (Debian package {package})")
        self.folder = Path(folder)
        self.storage_dir = self.folder / "storage"
        self.config_path = self.folder / "orthanc.json"
        self.port = port if port is not None else free_port()
        self.process: subprocess.Popen | None = None
        self.starts = 0

    @property
    def url(self) -> str:
        """Orthanc's REST API, ``http://127.0.0.1:PORT``."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def dicomweb_url(self) -> str:
        """The DICOMweb root (QIDO-RS, WADO-RS, STOW-RS), ``url + "/dicom-web"``."""
        return f"{self.url}/dicom-web"

    @property
    def log_path(self) -> Path:
        """The log of the latest start."""
        return self.folder / f"orthanc-{self.starts}.log"

    def config(self) -> dict:
        """Orthanc's configuration (written to ``orthanc.json`` at each start)."""
        return {
            "Name": "regionmir-test",
            "StorageDirectory": str(self.storage_dir),
            "IndexDirectory": str(self.storage_dir),
            "HttpPort": self.port,
            "DicomServerEnabled": False,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "Plugins": [str(DICOMWEB_PLUGIN)],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": False},
        }

    def ready(self) -> bool:
        """True once ``GET /system`` answers."""
        try:
            return requests.get(f"{self.url}/system", timeout=2).ok
        except requests.RequestException:
            return False

    def start(self) -> OrthancServer:
        """Start Orthanc and wait until it answers; raises ``RuntimeError`` with the log's tail if it does not."""
        if self.process is not None and self.process.poll() is None:
            raise RuntimeError(f"Orthanc already running at {self.url}")
        self.folder.mkdir(parents=True, exist_ok=True)
        self.storage_dir.mkdir(exist_ok=True)
        self.config_path.write_text(json.dumps(self.config(), indent=2))
        self.starts += 1
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                [str(ORTHANC_BINARY), str(self.config_path)],
                cwd=self.folder,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        deadline = time.monotonic() + self.start_timeout_s
        while not self.ready():
            if self.process.poll() is not None or time.monotonic() > deadline:
                code = self.process.poll()
                self.kill()
                raise RuntimeError(
                    f"Orthanc did not start at {self.url} (exit code {code}); "
                    f"log {self.log_path}:\n{_log_tail(self.log_path)}"
                )
            time.sleep(0.1)
        return self

    def stop(self) -> None:
        """SIGTERM, wait up to :attr:`stop_grace_s`, then SIGKILL. A stopped server is left as it is."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=self.stop_grace_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def kill(self) -> None:
        """SIGKILL (the PACS goes down without a word); ``start()`` brings it back on the same storage."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self.process = None

    def instance_count(self) -> int:
        """How many instances Orthanc holds (``GET /statistics``, ``CountInstances``)."""
        answer = requests.get(f"{self.url}/statistics", timeout=10)
        answer.raise_for_status()
        return int(answer.json()["CountInstances"])

    def store(self, dicom_files: list[bytes]) -> list[dict]:
        """Upload DICOM files (``POST /instances``, raw body); Orthanc's answer for each
        (``ID``, ``Status`` — ``Success`` or ``AlreadyStored`` —, ``ParentStudy``, …)."""
        answers = []
        for data in dicom_files:
            answer = requests.post(
                f"{self.url}/instances", data=data, headers={"Content-Type": "application/dicom"}, timeout=30
            )
            answer.raise_for_status()
            answers.append(answer.json())
        return answers

    def delete_instance(self, sop_instance_uid: str) -> None:
        """Remove one instance from the PACS (REST: ``/tools/lookup`` then ``DELETE /instances/ID``)."""
        found = requests.post(f"{self.url}/tools/lookup", data=sop_instance_uid, timeout=30)
        found.raise_for_status()
        [instance] = [item["ID"] for item in found.json() if item["Type"] == "Instance"]
        requests.delete(f"{self.url}/instances/{instance}", timeout=30).raise_for_status()

    def stow(self, dicom_files: list[bytes]) -> list[str]:
        """Store DICOM files the way a modality or a hospital's router does over DICOMweb: one
        STOW-RS request (:meth:`regionmir.dicomweb.DicomWebClient.store`); the SOP Instance UIDs taken."""
        import io

        import pydicom

        from regionmir.dicomweb import DicomWebClient

        return DicomWebClient(self.dicomweb_url).store([pydicom.dcmread(io.BytesIO(data)) for data in dicom_files])

    def __enter__(self) -> OrthancServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
