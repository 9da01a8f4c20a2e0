"""The last-resort decoder (SimpleITK's GDCM) in a child process.

GDCM only sees files that every pydicom decoder refused: damaged or non-conformant
compressed streams, the inputs most likely to make a C++ decoder crash or loop. Running it
in a child process means such a file costs a "cannot decode" message, never the
workstation: a crash, a hang (time limit) or a runaway allocation ends the child only.

One child serves a whole series (:class:`IsolatedGdcm` as a context manager). Frozen
builds without a Python interpreter decode in-process.

Protocol: the parent writes one JSON line ``{"path": ..., "out": ...}`` per file to the
child's stdin; the child saves the decoded array to ``out`` (``.npy``) and answers one
JSON line ``{"ok": true}`` or ``{"ok": false, "error": "..."}`` on a private pipe.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import subprocess
import sys
import tempfile
from pathlib import Path
from types import TracebackType

import numpy as np

__all__ = ["GdcmDecodeError", "IsolatedGdcm", "decode_in_process"]

DEFAULT_TIMEOUT_S = 120.0


class GdcmDecodeError(Exception):
    """GDCM could not decode a file; ``str(exc)`` says why (crash, time limit, refusal)."""


def decode_in_process(path: str) -> np.ndarray:
    """Decode one file with SimpleITK/GDCM here (values already rescaled).

    Raises
    ------
    GdcmDecodeError
        GDCM refused the file, or the image has more than one component.
    """
    import SimpleITK as sitk

    try:
        reader = sitk.ImageFileReader()
        reader.SetImageIO("GDCMImageIO")
        reader.SetFileName(os.fspath(path))
        image = reader.Execute()
    except RuntimeError as exc:
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
        raise GdcmDecodeError(lines[-1][:200] if lines else "GDCM refused the file") from exc
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise GdcmDecodeError("GDCM decoded a colour (multi-component) image")
    return sitk.GetArrayFromImage(image)


class IsolatedGdcm:
    """A child process that decodes files with GDCM, one at a time, with a time limit.

    Parameters
    ----------
    timeout_s : float
        Wall-clock limit per file; past it the child is killed and the file refused.
    """

    def __init__(self, *, timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        self.timeout_s = timeout_s
        self._proc: subprocess.Popen[bytes] | None = None
        self._answers: int | None = None
        self._tmp: tempfile.TemporaryDirectory[str] | None = None

    def __enter__(self) -> IsolatedGdcm:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @staticmethod
    def available() -> bool:
        """Whether a child Python can be started (not in a frozen build)."""
        return not getattr(sys, "frozen", False) and bool(sys.executable)

    def decode(self, path: str) -> np.ndarray:
        """Decode one file in the child.

        Raises
        ------
        GdcmDecodeError
            GDCM refused the file, crashed on it, or exceeded the time limit.
        """
        if not self.available():
            return decode_in_process(path)
        self._start()
        assert self._proc is not None and self._proc.stdin is not None and self._tmp is not None
        out = Path(self._tmp.name) / "frame.npy"
        with contextlib.suppress(FileNotFoundError):
            out.unlink()
        request = json.dumps({"path": os.fspath(path), "out": str(out)}) + "\n"
        try:
            self._proc.stdin.write(request.encode())
            self._proc.stdin.flush()
            answer = self._read_answer()
        except (BrokenPipeError, OSError) as exc:
            self.close()
            raise GdcmDecodeError("the GDCM decoder stopped unexpectedly") from exc
        if not answer.get("ok"):
            raise GdcmDecodeError(str(answer.get("error") or "GDCM refused the file"))
        try:
            return np.load(out, allow_pickle=False)
        finally:
            with contextlib.suppress(OSError):
                out.unlink()

    def _start(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            return
        self.close()
        self._tmp = tempfile.TemporaryDirectory(prefix="sacroplan-gdcm-")
        read_fd, write_fd = os.pipe()
        env = dict(os.environ)
        root = str(Path(__file__).resolve().parents[1])
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "imaging.dicom_gdcm", str(write_fd)],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            pass_fds=(write_fd,),
            env=env,
        )
        os.close(write_fd)
        self._answers = read_fd

    def _read_answer(self) -> dict:
        assert self._answers is not None
        buf = b""
        while not buf.endswith(b"\n"):
            ready, _, _ = select.select([self._answers], [], [], self.timeout_s)
            if not ready:
                self.close()
                raise GdcmDecodeError(
                    f"the GDCM decoder did not finish within {self.timeout_s:g} s"
                )
            chunk = os.read(self._answers, 65536)
            if not chunk:
                code = self._proc.wait(5) if self._proc is not None else None
                self.close()
                raise GdcmDecodeError(f"the GDCM decoder crashed on this file (exit code {code})")
            buf += chunk
        try:
            return json.loads(buf.decode())
        except ValueError:
            return {"ok": False, "error": "garbled answer from the GDCM decoder"}

    def close(self) -> None:
        """Stop the child (idempotent)."""
        proc, self._proc = self._proc, None
        if proc is not None:
            with contextlib.suppress(OSError):
                if proc.stdin is not None:
                    proc.stdin.close()
            try:
                proc.wait(2)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        if self._answers is not None:
            with contextlib.suppress(OSError):
                os.close(self._answers)
            self._answers = None
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None


def _serve(answer_fd: int) -> None:
    """Child: decode the files named on stdin, answer on ``answer_fd``."""
    with os.fdopen(answer_fd, "wb", buffering=0) as answers:
        for line in sys.stdin:
            try:
                request = json.loads(line)
                array = decode_in_process(request["path"])
                np.save(request["out"], array, allow_pickle=False)
                reply = {"ok": True}
            except Exception as exc:  # report, keep serving
                reply = {"ok": False, "error": str(exc)[:300] or type(exc).__name__}
            answers.write((json.dumps(reply) + "\n").encode())


if __name__ == "__main__":
    _serve(int(sys.argv[1]))
