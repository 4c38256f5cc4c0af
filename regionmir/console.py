"""What a command prints while it works: log lines and progress, one convention for every command.

Every module logs through ``logging.getLogger(__name__)``; a command calls :func:`configure_logging`
once, with its name, and its lines read ``[index] 464 regions written (52/s)``. Informational lines
go to stdout (they are the command's narrative: ``make demo > out.txt`` keeps them), warnings and
errors to stderr. ``--log-format json`` (or ``REGIONMIR_LOG_FORMAT=json``) writes one JSON object
per line instead — time, level, command, logger, message — for a cluster's log collector.

Long work reports through :func:`progress`: a tqdm bar on a terminal; elsewhere (a file, a pipe,
a pod's log) at most one line every :data:`PROGRESS_EVERY_S` seconds plus a last one, so a log
stays short whatever the job's size.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, TextIO

LOG_FORMAT_ENV = "REGIONMIR_LOG_FORMAT"
#: ``1`` after a command's ``--verbose``: ``cluster.ray_runtime.start_ray`` reads it (and local Ray
#: workers inherit it with the log format, so their lines match the driver's).
VERBOSE_ENV = "REGIONMIR_VERBOSE"
LOG_FORMATS = ("text", "json")
#: At most one progress line this often when the output is not a terminal.
PROGRESS_EVERY_S = 10.0

#: Our packages: their INFO lines are the command's narrative. Other libraries' (Ray Train's
#: "Reporting training result", milvus-lite's server start, faiss's CPU probing) reach the console
#: only at WARNING and above, unless --verbose.
OWN_PACKAGES = frozenset({"regionmir", "training", "indexing", "serving", "cluster", "demo", "__main__"})
#: Loggers of other packages that speak at INFO about their own plumbing; WARNING unless --verbose.
CHATTY_LIBRARIES = ("ray", "ray.data", "ray.train", "ray.tune", "ray.serve", "filelock", "urllib3", "botocore", "s3fs")

_HANDLER_MARK = "_regionmir_console"


class _TextFormatter(logging.Formatter):
    """``[command] message``; another library's traceback only with ``--verbose`` (its one line
    says what failed; our own errors say what to do)."""

    def __init__(self, command: str, verbose: bool = False):
        super().__init__()
        self.command, self.verbose = command, verbose

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        ours = record.name.split(".", 1)[0] in OWN_PACKAGES
        if record.exc_info and (ours or self.verbose):
            message += "\n" + self.formatException(record.exc_info)
        if record.levelno >= logging.WARNING:
            message = f"{record.levelname.lower()}: {message}"
        return f"[{self.command}] {message}" if self.command else message


class _JsonFormatter(logging.Formatter):
    def __init__(self, command: str):
        super().__init__()
        self.command = command

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "command": self.command,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


class _Below(logging.Filter):
    """Lines below ``level``; of other packages' lines none, unless ``everyone``."""

    def __init__(self, level: int, everyone: bool):
        super().__init__()
        self.level, self.everyone = level, everyone

    def filter(self, record: logging.LogRecord) -> bool:
        ours = record.name.split(".", 1)[0] in OWN_PACKAGES
        return record.levelno < self.level and (ours or self.everyone)


def add_logging_arguments(parser: Any) -> None:
    """``--verbose`` and ``--log-format`` on a command's argument parser."""
    parser.add_argument(
        "--verbose", action="store_true", help="debug lines, and Ray's own INFO lines on the console too"
    )
    parser.add_argument(
        "--log-format",
        choices=LOG_FORMATS,
        default=None,
        help=f"text lines, or one JSON object per line for a log collector (default ${LOG_FORMAT_ENV} or text)",
    )


def configure_logging(
    command: str, *, verbose: bool = False, log_format: str | None = None, stdout: TextIO | None = None
) -> None:
    """Route every logger's lines to the console as ``[command] message`` (or JSON lines).

    Replaces the handlers a previous call installed (a test, or a command run in-process twice),
    never another library's. ``verbose`` shows DEBUG lines and lets :data:`CHATTY_LIBRARIES` speak.
    """
    log_format = (log_format or os.environ.get(LOG_FORMAT_ENV) or "text").lower()
    if log_format not in LOG_FORMATS:
        raise ValueError(f"{LOG_FORMAT_ENV} must be one of {', '.join(LOG_FORMATS)}, got {log_format!r}")
    os.environ[LOG_FORMAT_ENV] = log_format
    os.environ[VERBOSE_ENV] = "1" if verbose else "0"
    formatter = _JsonFormatter(command) if log_format == "json" else _TextFormatter(command, verbose)
    root = logging.getLogger()
    for handler in [h for h in root.handlers if getattr(h, _HANDLER_MARK, False)]:
        root.removeHandler(handler)
    out = logging.StreamHandler(stdout or sys.stdout)
    out.addFilter(_Below(logging.WARNING, everyone=verbose))
    err = logging.StreamHandler(sys.stderr)
    err.setLevel(logging.WARNING)
    for handler in (out, err):
        handler.setFormatter(formatter)
        setattr(handler, _HANDLER_MARK, True)
        root.addHandler(handler)
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    for name in CHATTY_LIBRARIES:
        logging.getLogger(name).setLevel(logging.NOTSET if verbose else logging.WARNING)


def configure_command_logging(command: str, args: Any, *, stdout: TextIO | None = None) -> None:
    """:func:`configure_logging` from a command's parsed ``--verbose`` / ``--log-format``; ``stdout``
    moves the narrative elsewhere (stderr for a command whose stdout is its JSON result only)."""
    configure_logging(
        command,
        verbose=bool(getattr(args, "verbose", False)),
        log_format=getattr(args, "log_format", None),
        stdout=stdout,
    )


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


class Progress:
    """Counts work done; see :func:`progress`."""

    def __init__(self, what: str, total: int | None, unit: str, logger: logging.Logger, every_s: float, bar: Any):
        self.what, self.total, self.unit, self.logger, self.every_s = what, total, unit, logger, every_s
        self.done = 0
        self.started = self._last = time.monotonic()
        self._bar = bar

    def update(self, n: int = 1) -> None:
        self.done += n
        if self._bar is not None:
            self._bar.update(n)
            return
        now = time.monotonic()
        if now - self._last >= self.every_s:
            self._last = now
            self.logger.info(self.line())

    def line(self) -> str:
        elapsed = max(time.monotonic() - self.started, 1e-9)
        of = f"/{self.total}" if self.total is not None else ""
        share = f" ({100 * self.done / self.total:.0f} %)" if self.total else ""
        return f"{self.what}: {self.done}{of} {self.unit}{share}, {self.done / elapsed:.1f} {self.unit}/s"

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        elapsed = time.monotonic() - self.started
        self.logger.info(f"{self.what}: {self.done} {self.unit} in {elapsed:.0f} s")


@contextmanager
def progress(
    what: str,
    total: int | None = None,
    *,
    unit: str = "items",
    logger: logging.Logger | None = None,
    every_s: float = PROGRESS_EVERY_S,
    stream: TextIO | None = None,
) -> Iterator[Progress]:
    """``with progress("indexing films", total=n, unit="films") as p: ... p.update()``.

    A tqdm bar when ``stream`` (default stderr) is a terminal and tqdm is installed; otherwise a
    line through ``logger`` at most every ``every_s`` seconds and a closing line with the count and
    the time taken.
    """
    stream = stream or sys.stderr
    logger = logger or logging.getLogger("regionmir.progress")
    bar = None
    if _is_terminal(stream):
        try:
            from tqdm import tqdm

            bar = tqdm(total=total, desc=what, unit=f" {unit}", file=stream, leave=False, dynamic_ncols=True)
        except ImportError:
            bar = None
    tracker = Progress(what, total, unit, logger, every_s, bar)
    try:
        yield tracker
    finally:
        tracker.close()
