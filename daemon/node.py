"""Running the node: `contourqa scp`, `worker`, `scheduler`, and `serve`, which runs all of them on one
machine with an embedded Redis. Every process reads the same settings; Ctrl-C stops everything cleanly."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from celery.utils.nodenames import host_format

from contourqa.qa_models.atomic import write_text_atomically

from .assembler import Assembler
from .celery_app import INFERENCE_QUEUE, IO_QUEUE, app, configure, dispatch_case, runtime
from .config import Settings
from .db import open_database
from .embedded_redis import EmbeddedRedis
from .home_lock import hold_lock
from .metrics import Metrics
from .scheduler import start_scheduler
from .scp import Ingest, start_scp
from .store import Store
from .web import start_web

log = logging.getLogger(__name__)


STOP_POLL_S = 0.1  # how soon a stop request is seen


def _wait_for_signal(tick: Callable[[], None] | None = None, interval_s: float = 1.0) -> None:
    """Until SIGINT or SIGTERM, calling ``tick`` every ``interval_s``. The handler takes no lock: a second
    signal that lands while the first is handled (Ctrl-C twice, a supervisor's SIGTERM after it) would
    deadlock one that sets a threading.Event, whose set() holds a lock the second set() waits for."""
    received: list[int] = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda signum, _frame: received.append(signum))
    next_tick = time.monotonic() + interval_s
    while True:
        time.sleep(STOP_POLL_S)
        if received:  # before the tick: it would start again the children the same Ctrl-C is stopping
            return
        if tick is not None and time.monotonic() >= next_tick:
            tick()
            next_tick = time.monotonic() + interval_s


def prepare_home(settings: Settings) -> None:
    """The folders every process may write, made by whichever process starts first (any order works)."""
    for folder in (settings.home, settings.store_dir, settings.reports_dir, settings.home / "run",
                   settings.home / "incoming"):
        folder.mkdir(parents=True, exist_ok=True)


def clear_incoming(incoming: Path) -> int:
    """Remove what associations cut off mid-transfer left behind: nothing in incoming was acknowledged
    (an instance is acknowledged only once it is in the store), so none of it may be kept."""
    leftovers = [path for path in incoming.iterdir() if path.is_file()]
    for path in leftovers:
        path.unlink(missing_ok=True)
    if leftovers:
        log.warning("removed %d partial file(s) of interrupted transfers from %s", len(leftovers), incoming)
    return len(leftovers)


def run_scp(settings: Settings, with_scheduler: bool = False, tick: Callable[[], None] | None = None) -> None:
    """The SCP (and, in serve, the scheduler) in this process until SIGINT/SIGTERM."""
    prepare_home(settings)
    # one SCP per home: a second would clear the first's incoming transfers, then share its port file
    lock = hold_lock(settings.home / "run" / "scp.lock", f"{settings.home}: another contourqa SCP is running on "
                     "this home; stop it first, or give this one another --home")
    clear_incoming(settings.home / "incoming")
    configure(settings, settings.broker_url)
    sessions = open_database(settings.resolved_database_url(), wait_s=settings.database_wait_s)
    metrics = Metrics()
    metrics.watch(sessions, settings.broker_url)
    store = Store(settings.store_dir, sessions, settings.scp.min_free_disk_mb)
    assembler = Assembler(sessions, lambda case_id: dispatch_case(sessions, case_id))
    server = start_scp(settings.scp, Ingest(store, assembler, metrics), settings.home / "incoming")
    port = server.server_address[1]
    (settings.home / "run").mkdir(parents=True, exist_ok=True)
    # the port actually bound (0 = any free one), renamed into place: a script waiting for the file never
    # reads it empty
    write_text_atomically(settings.home / "run" / "scp.port", f"{port}\n")
    scheduler = start_scheduler(settings, sessions) if with_scheduler else None
    http = metrics.serve(settings.metrics_port) if settings.metrics_port is not None else None
    web = start_web(settings, sessions) if settings.web.port is not None else None
    print(f"contourqa: SCP {settings.scp.ae_title} listening on port {port}", flush=True)
    try:
        _wait_for_signal(tick)
    finally:
        log.info("stopping")
        server.shutdown()
        if scheduler is not None:
            scheduler.shutdown(wait=True)
        if http is not None:
            http[0].shutdown()
        if web is not None:
            web.shutdown()
        lock.close()


def run_web(settings: Settings) -> None:
    """Only the web page (split mode), until SIGINT/SIGTERM."""
    if settings.web.port is None:
        settings = settings.model_copy(update={"web": settings.web.model_copy(update={"port": 8480})})
    server = start_web(settings, open_database(settings.resolved_database_url(), create=False))
    print(f"contourqa: web page on port {server.server_address[1]}", flush=True)
    try:
        _wait_for_signal(None)
    finally:
        server.shutdown()


def run_worker(settings: Settings, queues: list[str], concurrency: int, name: str) -> int:
    """A Celery worker consuming ``queues`` (``gpu``: inference, ``io``: export); returns its exit status.

    Through ``app.Worker``, not ``app.worker_main``: the latter drops Celery's exit status, so a worker stopped
    by an unrecoverable error would exit 0 and a supervisor restarting only failures would leave it down."""
    prepare_home(settings)
    configure(settings, settings.broker_url)
    runtime.inference = INFERENCE_QUEUE in queues
    worker = app.Worker(queues=queues, concurrency=concurrency, hostname=host_format(f"{name}@%h"),
                        loglevel=settings.log_level, pool_cls="prefork",
                        without_gossip=True, without_mingle=True, without_heartbeat=True)
    worker.start()
    return worker.exitcode or 0


def run_scheduler(settings: Settings) -> None:
    prepare_home(settings)
    configure(settings, settings.broker_url)
    sessions = open_database(settings.resolved_database_url(), wait_s=settings.database_wait_s)
    log.info("scheduler: sweep every %.0f s", settings.scheduler.sweep_interval_s)
    start_scheduler(settings, sessions, blocking=True)


class _Child:
    """A worker subprocess that is started again when it dies unexpectedly."""

    def __init__(self, command: list[str]):
        self.command = command
        self.process = self._start()

    def _start(self) -> subprocess.Popen:
        return subprocess.Popen(self.command, stdin=subprocess.DEVNULL)

    def keep_alive(self) -> None:
        if self.process.poll() is not None:
            log.error("worker exited with status %s; starting it again", self.process.returncode)
            self.process = self._start()

    def ask_to_stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)  # Celery's warm shutdown: finish the current task

    def wait(self, timeout_s: float = 30) -> None:
        try:
            self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def serve(settings: Settings) -> None:
    """SCP, scheduler, an inference and an export worker, and (without ``broker_url``) an embedded Redis."""
    settings = settings.model_copy(update={"home": settings.home.resolve()})
    # the embedded Redis first: it refuses a home another serve runs on, before anything is touched
    redis = EmbeddedRedis(settings.home / "redis").start() if settings.broker_url is None else None
    prepare_home(settings)
    settings = settings.model_copy(update={"broker_url": settings.broker_url or redis.url})
    effective = settings.home / "run" / "settings.json"
    effective.parent.mkdir(parents=True, exist_ok=True)
    effective.write_text(json.dumps(settings.model_dump(mode="json"), indent=1))
    worker = [sys.executable, "-m", "contourqa.cli", "worker", "--config", str(effective)]
    children = [
        _Child(worker + ["--queues", INFERENCE_QUEUE, "--concurrency", str(settings.worker.concurrency),
                         "--name", f"gpu-{os.getpid()}"]),
        _Child(worker + ["--queues", IO_QUEUE, "--concurrency", "1", "--name", f"io-{os.getpid()}"]),
    ]
    try:
        keep_alive = [*children, *([redis] if redis is not None else [])]
        run_scp(settings, with_scheduler=True, tick=lambda: [c.keep_alive() for c in keep_alive])
    finally:
        for child in children:  # all at once: each warm shutdown takes seconds
            child.ask_to_stop()
        for child in children:
            child.wait()
        if redis is not None:
            redis.stop()
