"""One console convention for every command: `[command] message` lines on stdout, warnings on stderr,
JSON lines on request, Ray's chatter held back unless --verbose, progress at most every N seconds
when the output is not a terminal."""

from __future__ import annotations

import io
import json
import logging
import time

import pytest

from regionmir.command_help import command_parser
from regionmir.console import configure_command_logging, configure_logging, progress


@pytest.fixture(autouse=True)
def _restore_logging(monkeypatch):
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    for name in ("REGIONMIR_LOG_FORMAT", "REGIONMIR_VERBOSE"):  # configure_logging records both
        monkeypatch.delenv(name, raising=False)
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    for name in ("ray", "ray.data"):
        logging.getLogger(name).setLevel(logging.NOTSET)


def test_info_lines_go_to_stdout_as_command_lines_and_warnings_to_stderr(capsys):
    configure_logging("index")
    logging.getLogger("indexing.build").info("464 regions written")
    logging.getLogger("indexing.build").warning("film p10/x.png unreadable")
    logging.getLogger("indexing.build").debug("not shown without --verbose")
    out, err = capsys.readouterr()
    assert out == "[index] 464 regions written\n"
    assert err == "[index] warning: film p10/x.png unreadable\n"


def test_json_lines_carry_time_level_command_logger_and_message(capsys):
    args = command_parser(prog="x").parse_args(["--log-format", "json"])
    configure_command_logging("evaluate", args)
    logging.getLogger("indexing.evaluate").info("p@10 0.91")
    entry = json.loads(capsys.readouterr().out)
    assert entry["level"] == "info" and entry["command"] == "evaluate" and entry["logger"] == "indexing.evaluate"
    assert entry["message"] == "p@10 0.91" and entry["time"].endswith("Z")


def test_ray_info_lines_are_held_back_unless_verbose():
    # Ray's loggers may carry their own handlers (once Ray is imported): what matters is what they emit
    ray_data = logging.getLogger("ray.data")
    configure_logging("train")
    assert not ray_data.isEnabledFor(logging.INFO) and ray_data.isEnabledFor(logging.WARNING)
    configure_logging("train", verbose=True)
    assert ray_data.isEnabledFor(logging.INFO)


def test_another_librarys_traceback_shows_only_with_verbose(capsys):
    def failing(name: str) -> None:
        try:
            raise OSError("lock held")
        except OSError:
            logging.getLogger(name).exception("failed to start the server")

    configure_logging("index")
    failing("milvus_lite.server_manager")
    failing("indexing.build")
    err = capsys.readouterr().err
    assert err.count("Traceback") == 1 and "[index] error: failed to start the server\n[index] error" in err
    configure_logging("index", verbose=True)
    failing("milvus_lite.server_manager")
    assert "Traceback" in capsys.readouterr().err


def test_other_libraries_info_lines_stay_off_the_console_unless_verbose(capsys):
    configure_logging("index")
    logging.getLogger("milvus_lite.server").info("MilvusLite server started")
    logging.getLogger("ray.train.v2._internal.worker").info("Reporting training result 1")
    logging.getLogger("faiss.loader").warning("a library's warning still shows")
    logging.getLogger("training.run").info("ours shows")
    out, err = capsys.readouterr()
    assert out == "[index] ours shows\n" and "a library's warning still shows" in err
    configure_logging("index", verbose=True)
    logging.getLogger("milvus_lite.server").info("MilvusLite server started")
    assert "MilvusLite server started" in capsys.readouterr().out


def test_an_unknown_log_format_is_refused_by_name(monkeypatch):
    monkeypatch.setenv("REGIONMIR_LOG_FORMAT", "xml")
    with pytest.raises(ValueError, match="REGIONMIR_LOG_FORMAT must be one of text, json"):
        configure_logging("x")


def test_progress_off_a_terminal_writes_at_most_one_line_per_interval_and_a_last_one(capsys):
    configure_logging("index")
    with progress("indexing films", total=100, unit="films", every_s=0.2, stream=io.StringIO()) as counter:
        started = time.monotonic()
        for _ in range(100):
            counter.update()
            time.sleep(0.01)
        elapsed = time.monotonic() - started
    lines = capsys.readouterr().out.splitlines()
    assert lines[-1].startswith("[index] indexing films: 100 films in ")
    periodic = lines[:-1]
    assert 1 <= len(periodic) <= elapsed / 0.2 + 1
    assert all("/100 films (" in line and "films/s" in line for line in periodic)
