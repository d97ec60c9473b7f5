"""`contourqa` commands for the tests, each in its own process, without paying the imports every time.

A test process starts one server (this file run as a script) that imports the libraries the commands use
(torch, highdicom, SimpleITK, scipy: 2-5 s of CPU a command) and then forks a child per command. The
child is a separate process with the arguments, working folder, environment and exit status of
`python -m contourqa.cli ARGS`: its stdout and stderr go to files, an uncaught exception prints its
traceback and exits 1, as the interpreter does. Nothing of the test process is inherited, so a command
cannot see or change the test's state. Tests that are about how a process starts (the node's `serve`,
Ctrl-C) start `python -m contourqa.cli` themselves.

Protocol, one JSON line each way: the caller sends {"args", "cwd", "env", "stdout", "stderr"}, the server
answers {"pid"} at once and {"returncode"} when the child ends.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import tempfile
import threading
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
        answers.write(json.dumps({"pid": pid}) + "\n")
        answers.flush()
        _, status = os.waitpid(pid, 0)
        answers.write(json.dumps({"returncode": os.waitstatus_to_exitcode(status)}) + "\n")
        answers.flush()


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

    def _answer(self, server: subprocess.Popen, timeout: float | None) -> dict:
        ready, _, _ = select.select([server.stdout], [], [], timeout)
        if not ready:
            raise TimeoutError
        line = server.stdout.readline()
        if not line:
            raise RuntimeError("the CLI test server ended")
        return json.loads(line)

    def run(self, args: list[str], timeout: float) -> subprocess.CompletedProcess:
        with self._lock, tempfile.TemporaryDirectory() as folder:
            out, err = Path(folder) / "stdout", Path(folder) / "stderr"
            out.touch(), err.touch()
            server = self._start()
            server.stdin.write(json.dumps({"args": args, "cwd": os.getcwd(), "env": dict(os.environ),
                                           "stdout": str(out), "stderr": str(err)}) + "\n")
            server.stdin.flush()
            pid = self._answer(server, 60)["pid"]
            try:
                returncode = self._answer(server, timeout)["returncode"]
            except TimeoutError:
                os.kill(pid, signal.SIGKILL)
                self._answer(server, 60)
                raise subprocess.TimeoutExpired(["contourqa", *args], timeout,
                                                out.read_text(errors="replace"), err.read_text(errors="replace"))
            return subprocess.CompletedProcess(["contourqa", *args], returncode, out.read_text(errors="replace"),
                                               err.read_text(errors="replace"))

    def close(self) -> None:
        if self._server is not None and self._server.poll() is None:
            self._server.stdin.close()
            self._server.wait(timeout=30)


if __name__ == "__main__":
    serve()
