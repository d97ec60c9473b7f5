"""`contourqa` commands for the tests, each in its own process, without paying the imports every time.

A test process starts one server (this file run as a script) that imports the libraries the commands use
(torch, highdicom, SimpleITK, scipy: 2-5 s of CPU a command) and then forks a child per command. The
child is a separate process with the arguments, working folder, environment and exit status of
`python -m contourqa.cli ARGS`: its stdout and stderr go to files, an uncaught exception prints its
traceback and exits 1, as the interpreter does. Nothing of the test process is inherited, so a command
cannot see or change the test's state. Tests that are about how a process starts (the node's `serve`,
Ctrl-C) start `python -m contourqa.cli` themselves.

Protocol, one JSON line each way: the caller sends {"args", "cwd", "env", "stdout", "stderr", "timeout"},
the server answers {"returncode", "timed_out"} when the child has ended (killed once past its timeout).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

PRELOADED = ("torch", "highdicom", "SimpleITK", "scipy.ndimage", "scipy.stats", "sklearn.ensemble", "pynetdicom",
             "sqlalchemy", "jinja2", "contourqa.cli", "contourqa.qa_models.assessment",
             "contourqa.qa_models.predictor", "contourqa.training.phantom")


def _child(request: dict) -> None:
    """Runs in the forked child: become `python -m contourqa.cli ARGS` and exit with its status."""
    code = 1
    try:
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        for fd, path, flags in ((0, os.devnull, os.O_RDONLY), (1, request["stdout"], os.O_WRONLY),
                                (2, request["stderr"], os.O_WRONLY)):
            os.dup2(os.open(path, flags), fd)
        sys.argv = [sys.argv[0], *request["args"]]
        from contourqa.cli import main
        try:
            code = main(request["args"]) or 0
        except SystemExit as exit_:  # as the interpreter ends: None is 0, a message is printed and gives 1
            code = 0 if exit_.code is None else exit_.code
            if not isinstance(code, int):
                print(code, file=sys.stderr)
                code = 1
        except BaseException:
            import traceback
            traceback.print_exc()
            code = 1
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:
                pass
        os._exit(code)


def serve() -> None:
    import importlib
    for name in PRELOADED:
        importlib.import_module(name)
    requests, answers = sys.stdin, sys.stdout
    for line in requests:
        request = json.loads(line)
        pid = os.fork()
        if pid == 0:
            _child(request)
        returncode, timed_out = _wait(pid, request["timeout"])
        answers.write(json.dumps({"returncode": returncode, "timed_out": timed_out}) + "\n")
        answers.flush()


def _wait(pid: int, timeout: float) -> tuple[int, bool]:
    """The child's exit status, and whether it had to be killed for running past ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status), False
        time.sleep(0.02)
    os.kill(pid, signal.SIGKILL)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]), True


class CliRunner:
    """One server per test process, started on first use."""

    def __init__(self):
        self._server: subprocess.Popen | None = None
        self._lock = threading.Lock()

    def _start(self) -> subprocess.Popen:
        if self._server is None or self._server.poll() is not None:
            self._server = subprocess.Popen([sys.executable, __file__], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                            text=True, bufsize=1)
        return self._server

    def run(self, args: list[str], timeout: float) -> subprocess.CompletedProcess:
        with self._lock, tempfile.TemporaryDirectory() as folder:
            out, err = Path(folder) / "stdout", Path(folder) / "stderr"
            out.touch(), err.touch()
            server = self._start()
            server.stdin.write(json.dumps({"args": args, "cwd": os.getcwd(), "env": dict(os.environ),
                                           "stdout": str(out), "stderr": str(err), "timeout": timeout}) + "\n")
            server.stdin.flush()
            line = server.stdout.readline()
            if not line:
                raise RuntimeError("the CLI test server ended")
            answer = json.loads(line)
            stdout, stderr = out.read_text(errors="replace"), err.read_text(errors="replace")
            if answer["timed_out"]:
                raise subprocess.TimeoutExpired(["contourqa", *args], timeout, stdout, stderr)
            return subprocess.CompletedProcess(["contourqa", *args], answer["returncode"], stdout, stderr)

    def close(self) -> None:
        if self._server is not None and self._server.poll() is None:
            self._server.stdin.close()
            self._server.wait(timeout=30)


if __name__ == "__main__":
    serve()
