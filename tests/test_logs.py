"""The rotating log file shared by the command line and the workstation."""

from __future__ import annotations

import contextlib
import io
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from app import logs
from app.cli import main
from app.logs import (
    BACKUP_COUNT,
    MAX_LOG_BYTES,
    enable_fault_log,
    log_file_path,
    setup_logging,
    state_dir,
)

REPO_ROOT = Path(__file__).resolve().parents[1]


def our_handlers() -> list[logging.Handler]:
    return [h for h in logging.getLogger("sacroplan").handlers if h.get_name() == "sacroplan-file"]


def flush() -> None:
    for h in our_handlers():
        h.flush()


def test_log_file_lives_in_the_state_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("SACROPLAN_HOME", str(tmp_path / "home"))
    assert state_dir() == tmp_path / "home"
    assert log_file_path() == tmp_path / "home" / "logs" / "sacroplan.log"
    assert setup_logging() == log_file_path()
    logging.getLogger("sacroplan.test").info("hello from the test")
    flush()
    assert "hello from the test" in log_file_path().read_text()


def test_default_state_folder_is_in_the_home(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("SACROPLAN_HOME")
    assert state_dir() == Path.home() / ".sacroplan"


def test_setup_is_idempotent_and_follows_the_state_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setenv("SACROPLAN_HOME", str(tmp_path / "a"))
    setup_logging()
    setup_logging()
    assert len(our_handlers()) == 1
    monkeypatch.setenv("SACROPLAN_HOME", str(tmp_path / "b"))
    setup_logging()
    assert len(our_handlers()) == 1
    logging.getLogger("sacroplan.test").warning("second home")
    flush()
    assert "second home" in (tmp_path / "b" / "logs" / "sacroplan.log").read_text()
    assert "second home" not in (tmp_path / "a" / "logs" / "sacroplan.log").read_text()


def test_the_log_rotates(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("SACROPLAN_HOME", str(tmp_path))
    setup_logging()
    log = logging.getLogger("sacroplan.test")
    line = "x" * 10_000
    for _ in range((BACKUP_COUNT + 2) * MAX_LOG_BYTES // len(line)):
        log.info(line)
    flush()
    files = sorted(p.name for p in (tmp_path / "logs").iterdir())
    assert files == ["sacroplan.log"] + [f"sacroplan.log.{n}" for n in range(1, BACKUP_COUNT + 1)]
    for p in (tmp_path / "logs").iterdir():
        assert p.stat().st_size <= MAX_LOG_BYTES + len(line) + 200


def test_unwritable_state_folder_keeps_commands_working(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the state folder should be")
    monkeypatch.setenv("SACROPLAN_HOME", str(blocker))
    assert setup_logging() is None
    logging.getLogger("sacroplan.test").error("goes nowhere, raises nothing")
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["info", str(tmp_path / "missing")])
    assert code == 2 and "no such file or folder" in err.getvalue()
    assert blocker.read_text() == "a file where the state folder should be"


def test_cli_internal_error_exits_3_with_the_log_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """An unexpected exception: one line naming the log file; the traceback is in the log."""
    import imaging.read

    def broken_scan(path: object) -> None:
        raise RuntimeError("an unexpected bug in scan")

    monkeypatch.setenv("SACROPLAN_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(imaging.read, "scan", broken_scan)
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["info", str(tmp_path)])
    assert code == 3
    message = err.getvalue()
    assert message.count("\n") == 1 and "Traceback" not in message
    assert "internal error: RuntimeError: an unexpected bug in scan" in message
    assert str(log_file_path()) in message
    flush()
    text = log_file_path().read_text()
    assert "Traceback (most recent call last)" in text
    assert "an unexpected bug in scan" in text and "broken_scan" in text


def test_a_hard_crash_leaves_its_stack_in_the_fault_log(tmp_path: Path):
    """A real segmentation fault in a child process that called enable_fault_log."""
    env = dict(os.environ, SACROPLAN_HOME=str(tmp_path), PYTHONPATH=str(REPO_ROOT))
    code = (
        "import faulthandler\n"
        "from app.logs import enable_fault_log\n"
        "print(enable_fault_log())\n"
        "def crash_here():\n"
        "    faulthandler._sigsegv()\n"
        "crash_here()\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode != 0
    fault_log = tmp_path / "logs" / "faults.log"
    assert proc.stdout.strip() == str(fault_log)
    text = fault_log.read_text()
    assert "Segmentation fault" in text and "crash_here" in text


def test_fault_log_can_be_reenabled(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    import faulthandler

    was_enabled = faulthandler.is_enabled()
    monkeypatch.setenv("SACROPLAN_HOME", str(tmp_path))
    try:
        assert enable_fault_log() == tmp_path / "logs" / "faults.log"
        assert enable_fault_log() == tmp_path / "logs" / "faults.log"
        assert faulthandler.is_enabled()
    finally:
        faulthandler.disable()
        if logs._fault_file is not None:
            logs._fault_file.close()
            logs._fault_file = None
        if was_enabled:
            faulthandler.enable()
