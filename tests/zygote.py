"""Run scripts in fresh processes forked from one that has already imported the libraries.

The examples and the documentation's samples each run as ``python script.py`` would: a
process of their own, their own working directory, environment, ``sys.argv``, ``__main__``
namespace and standard streams, and a normal interpreter exit (atexit handlers, non-daemon
threads joined, buffers flushed). What they do not pay again is importing rxcontext and the
three provider SDKs: about 1.1 s of CPU of the ~1.2 s such a script costs, measured over the
suite (the SDKs build thousands of pydantic models at import). The zygote imports them once,
then forks a child per script. The script's own ``import`` statements still run (they find
the modules loaded), so a script that forgets one fails as it would anywhere.

The zygote is single-threaded (nothing it imports starts a thread), so forking it is safe.
``ZYGOTE=0`` in the environment runs every script with ``subprocess`` instead.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

_SOURCE = r"""
import io, json, os, runpy, sys, traceback

import rxcontext, rxcontext.providers  # noqa: F401
for name in ("openai", "anthropic", "google.genai"):
    try:
        __import__(name)
    except ImportError:
        pass

import gc

gc.collect()
gc.freeze()  # the children's collections leave the imported objects alone (no page copies)

requests = sys.stdin.buffer
answers = sys.stdout.buffer


def child(req):
    os.chdir(req["cwd"])
    os.environ.clear()
    os.environ.update(req["env"])
    stdin = os.open(os.devnull, os.O_RDONLY)
    out = os.open(req["stdout"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    err = os.open(req["stderr"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    for fd, target in ((stdin, 0), (out, 1), (err, 2)):
        os.dup2(fd, target)
        os.close(fd)
    encoding = "utf-8"
    sys.stdin = io.TextIOWrapper(io.FileIO(0, "r", closefd=False), encoding=encoding)
    sys.stdout = io.TextIOWrapper(io.FileIO(1, "w", closefd=False), encoding=encoding)
    sys.stderr = io.TextIOWrapper(
        io.FileIO(2, "w", closefd=False), encoding=encoding, errors="backslashreplace",
        line_buffering=True,
    )
    path = req["path"]
    sys.argv = [path]
    sys.path[0] = os.path.dirname(os.path.abspath(path))
    runpy.run_path(path, run_name="__main__")


while True:
    line = requests.readline()
    if not line:
        break
    req = json.loads(line)
    pid = os.fork()
    if pid == 0:
        try:
            child(req)
        except SystemExit:
            raise
        except BaseException:
            traceback.print_exc()
            raise SystemExit(1)
        raise SystemExit(0)  # the interpreter's normal exit: atexit, threads, flushing
    answers.write((json.dumps({"pid": pid}) + "\n").encode())
    answers.flush()
    _, status = os.waitpid(pid, 0)
    answers.write((json.dumps({"status": os.waitstatus_to_exitcode(status)}) + "\n").encode())
    answers.flush()
"""


class Zygote:
    """One warm process; :meth:`run` is ``subprocess.run([python, path], ...)`` for scripts."""

    def __init__(self) -> None:
        self._proc = subprocess.Popen(
            [sys.executable, "-c", _SOURCE],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        self._lock = threading.Lock()

    def run(
        self, path: Path, cwd: Path, env: dict[str, str], timeout: float
    ) -> subprocess.CompletedProcess[str]:
        """Run ``path`` as a script; its exit status and its output, decoded as UTF-8."""
        assert self._proc.stdin is not None and self._proc.stdout is not None
        with self._lock, tempfile.TemporaryDirectory() as scratch:
            out, err = Path(scratch, "out"), Path(scratch, "err")
            request = {
                "path": str(path),
                "cwd": str(cwd),
                "env": env,
                "stdout": str(out),
                "stderr": str(err),
            }
            self._proc.stdin.write((json.dumps(request) + "\n").encode())
            self._proc.stdin.flush()
            pid = json.loads(self._proc.stdout.readline())["pid"]
            timer = threading.Timer(timeout, _kill, (pid,))
            timer.start()
            try:
                line = self._proc.stdout.readline()
            finally:
                timer.cancel()
            if not line:
                raise RuntimeError("the zygote process died")
            status = json.loads(line)["status"]
            return subprocess.CompletedProcess(
                [sys.executable, str(path)],
                status,
                out.read_text(encoding="utf-8", errors="replace"),
                err.read_text(encoding="utf-8", errors="replace"),
            )

    def close(self) -> None:
        if self._proc.stdin is not None:
            self._proc.stdin.close()
        self._proc.wait(timeout=30)
        if self._proc.stdout is not None:
            self._proc.stdout.close()


def _kill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, 9)


def wanted() -> bool:
    """Whether scripts run in the zygote (``ZYGOTE=0``: plain subprocesses)."""
    return os.environ.get("ZYGOTE", "1") != "0" and hasattr(os, "fork")
