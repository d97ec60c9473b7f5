"""Real peers for the node's tests: `contourqa serve` as a subprocess, dcmtk's storescp as the
destination, dcmtk's storescu/echoscu as the PACS. Free ports, and waits on conditions with deadlines."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pydicom
import yaml
from pydicom.uid import generate_uid


# dcmtk waits for more data before sending a small packet (Nagle's algorithm) unless told otherwise; with
# it, its peers measure 20 instances/s instead of 40-60
DCMTK_ENV = {**os.environ, "TCP_NODELAY": "1"}


def dcmtk(name: str) -> str:
    """dcmtk's binary (pynetdicom installs Python apps with the same names earlier on PATH); run it with
    ``env=DCMTK_ENV``."""
    path = Path("/usr/bin") / name
    if not path.exists():
        raise RuntimeError(f"dcmtk's {name} is not installed; tests/run_all.sh installs it")
    return str(path)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(condition: Callable[[], object], timeout: float, what: str, interval: float = 0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


class Destination:
    """dcmtk storescp writing every received object into a folder.

    storescp writes into a hidden folder and moves each file in once it is complete, so a test that reads
    `received()` never parses a file storescp is still writing."""

    def __init__(self, folder: Path, port: int | None = None, ae_title: str = "DEST"):
        self.folder, self.port, self.ae_title = folder, port or free_port(), ae_title
        self.process: subprocess.Popen | None = None
        self.incoming = folder / ".incoming"
        self.incoming.mkdir(parents=True, exist_ok=True)

    @property
    def address(self) -> str:
        return f"{self.ae_title}@127.0.0.1:{self.port}"

    def start(self) -> "Destination":
        self.process = subprocess.Popen([dcmtk("storescp"), "-aet", self.ae_title, "-od", str(self.incoming),
                                         "--exec-on-reception", f"mv '#p/#f' '{self.folder}/'",
                                         "--fork", str(self.port)], stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL, env=DCMTK_ENV)
        wait_for(lambda: listening(self.port), 10, "storescp to listen")
        return self

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)

    def received(self) -> list[Path]:
        return sorted(p for p in self.folder.iterdir() if p.is_file())

    def received_uids(self) -> list[str]:
        return [str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in self.received()]


def listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


class Node:
    """`contourqa serve` in a subprocess, configured by a YAML file under its home."""

    def __init__(self, home: Path, **config):
        self.home = home
        self.config = {
            "home": str(home),
            "scp": {"port": 0, "allowed_callers": [{"ae_title": "PACS"}], "min_free_disk_mb": 0},
            "assembly": {"stable_age_s": 3},
            "scheduler": {"sweep_interval_s": 0.5},
            "export": {"initial_delay_s": 0.5, "max_delay_s": 2, "timeout_s": 5},
            "worker": {"soft_time_limit_s": 60, "time_limit_s": 90},
            "assess": {"mc_samples": 2},
        }
        for key, value in config.items():
            self.config.setdefault(key, {}).update(value) if isinstance(value, dict) else self.config.update(
                {key: value})
        self.process: subprocess.Popen | None = None
        self.port: int | None = None
        self._status_source = None  # database and broker of the running `serve`, read by the first `status`

    def start(self) -> "Node":
        self.home.mkdir(parents=True, exist_ok=True)
        self._status_source = None
        config = self.home / "config.yaml"
        config.write_text(yaml.safe_dump(self.config))
        port_file = self.home / "run" / "scp.port"
        port_file.unlink(missing_ok=True)
        self.log = open(self.home / "serve.log", "a")
        self.process = subprocess.Popen([sys.executable, "-m", "contourqa.cli", "serve", "--config",
                                         str(config)], stdout=self.log, stderr=subprocess.STDOUT,
                                        start_new_session=True)
        wait_for(lambda: port_file.exists() or self.process.poll() is not None, 60, "the SCP to listen")
        assert self.process.poll() is None, self.log_text()
        self.port = int(port_file.read_text())
        wait_for(lambda: self.log_text().count(" ready.") >= 2, 60, "both Celery workers")
        return self

    def stop(self, timeout: float = 60) -> int:
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else 0
        self.process.send_signal(signal.SIGINT)
        try:
            return self.process.wait(timeout=timeout)
        finally:
            if self.process.poll() is None:
                os.killpg(self.process.pid, signal.SIGKILL)
            self.log.close()

    def log_text(self) -> str:
        path = self.home / "serve.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def status(self, cli: bool = False) -> dict:
        """`contourqa status --json`; read in this process unless ``cli`` (tests poll it: a process per
        poll would take a core from the node under test)."""
        if cli:
            result = subprocess.run([sys.executable, "-m", "contourqa.cli", "status", "--config",
                                     str(self.home / "config.yaml"), "--json"], capture_output=True, text=True,
                                    timeout=60)
            assert result.returncode == 0, result.stderr
            return json.loads(result.stdout)
        from contourqa.daemon.config import load_settings
        from contourqa.daemon.db import open_database
        from contourqa.daemon.status import status_report
        if self._status_source is None:  # the settings `serve` runs with, as the CLI reads them
            settings = load_settings(self.home / "run" / "settings.json")
            self._status_source = open_database(settings.resolved_database_url(), create=False), settings.broker_url
        return json.loads(json.dumps(status_report(*self._status_source), default=str))

    def running_cases(self) -> int:
        """Read straight from the node's SQLite database: fast enough to catch a case while it runs."""
        import sqlite3
        with sqlite3.connect(self.home / "contourqa.sqlite", timeout=5) as db:
            return db.execute("select count(*) from cases where state = 'running'").fetchone()[0]

    @staticmethod
    def _processes() -> list[tuple[int, int, str]]:
        out = subprocess.run(["ps", "-ww", "-eo", "pid,ppid,args"], capture_output=True, text=True).stdout
        return [(int(pid), int(ppid), args) for pid, ppid, args in (line.split(None, 2) for line in out.splitlines()[1:])]

    def worker_mains(self) -> list[int]:
        """PIDs of the inference worker's main processes (started by serve)."""
        return [pid for pid, ppid, args in self._processes()
                if ppid == self.process.pid and "--queues gpu" in args and "worker" in args]

    def embedded_redis(self) -> list[int]:
        """PID of the Redis server serve started (Redis sets its own process title)."""
        return [pid for pid, ppid, args in self._processes() if ppid == self.process.pid and "redis-server" in args]

    def worker_children(self) -> list[int]:
        """PIDs of the inference worker's pool processes (the ones running tasks)."""
        mains = self.worker_mains()
        return [pid for pid, ppid, _ in self._processes() if ppid in mains]


def send(port: int, *paths: Path, calling_ae: str = "PACS", called_ae: str = "CONTOURQA",
         host: str = "127.0.0.1") -> subprocess.CompletedProcess:
    """dcmtk storescu proposing only what the files need (-R), so SEG storage is offered; verbose, so its
    stderr holds each C-STORE response's status."""
    return subprocess.run([dcmtk("storescu"), "-v", "-R", "+sd", "-aet", calling_ae, "-aec", called_ae, host,
                           str(port), *map(str, paths)], capture_output=True, text=True, timeout=300, env=DCMTK_ENV)


def clone_study(case_dir: Path, out: Path, structure: str = "candidates/auto01.dcm") -> Path:
    """A copy of a phantom study's image series and one structure file under new study/series/instance UIDs
    (references rewritten consistently), so one phantom makes many distinct studies."""
    files = sorted((case_dir / "image").iterdir()) + [case_dir / structure]
    datasets = [pydicom.dcmread(p) for p in files]
    old = {str(getattr(ds, kw)) for ds in datasets
           for kw in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "FrameOfReferenceUID")}
    mapping = {uid: generate_uid() for uid in old}

    def rewrite(dataset, element):
        if element.VR == "UI" and element.value in mapping:
            element.value = mapping[element.value]

    out.mkdir(parents=True, exist_ok=True)
    for n, ds in enumerate(datasets):
        ds.walk(rewrite)
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.save_as(out / f"{n:04d}.dcm", enforce_file_format=True)
    return out


def approved_copy(source: Path, target: Path) -> str:
    """The structure set as the planning system sends it back after the physician approved it (a new
    instance and series, ApprovalStatus APPROVED), written to ``target``; its SOP Instance UID."""
    ds = pydicom.dcmread(source)
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.ApprovalStatus, ds.StructureSetLabel = "APPROVED", "Approved"
    ds.save_as(target)
    return str(ds.SOPInstanceUID)
