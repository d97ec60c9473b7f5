"""A real PostgreSQL server for the tests: Debian's binaries, a throw-away cluster on a free port. PostgreSQL
refuses to run as root, so as root it runs as the `postgres` user. By default it is reached over its Unix
socket only; ``listen`` makes it take TCP connections on that address as well (a split deployment's
processes reach it over the network), and ``prefix`` runs its commands in another network namespace."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from node_harness import free_port


def _as_server_user(command: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else command


class PostgresServer:
    def __init__(self, listen: str | None = None, prefix: tuple[str, ...] = ()) -> None:
        found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
        if not found:
            raise RuntimeError("PostgreSQL is not installed; tests/run_all.sh installs it")
        self.bin = found[-1].parent
        self.listen, self.prefix = listen, list(prefix)
        # under /tmp itself (not tempfile.tempdir, which the in-process SCP points at its incoming folder):
        # the server user must reach it
        self.folder = Path(tempfile.mkdtemp(prefix="contourqa-pg-", dir="/tmp"))
        self.port = free_port()

    def _run(self, tool: str, *args: str) -> None:
        subprocess.run(self.prefix + _as_server_user([str(self.bin / tool), *args]), check=True,
                       capture_output=True)

    def start(self) -> "PostgresServer":
        return self.initialize().resume()

    def initialize(self) -> "PostgresServer":
        """A new cluster in the folder, not yet running."""
        if os.geteuid() == 0:
            shutil.chown(self.folder, "postgres")
        self._run("initdb", "-D", str(self.folder / "data"), "-A", "trust", "-U", "postgres")
        if self.listen:
            with open(self.folder / "data" / "pg_hba.conf", "a") as hba:
                hba.write("host all all 0.0.0.0/0 trust\n")
        return self

    def resume(self) -> "PostgresServer":
        """Start the server (again, on the same port and data)."""
        self._run("pg_ctl", "-D", str(self.folder / "data"), "-w", "-l", str(self.folder / "server.log"), "-o",
                  f"-p {self.port} -k {self.folder} -c listen_addresses='{self.listen or ''}'", "start")
        return self

    def pause(self) -> None:
        """Stop the server, keeping its data: clients see their connections closed and new ones refused."""
        self._run("pg_ctl", "-D", str(self.folder / "data"), "-m", "fast", "-w", "stop")

    def create_database(self, name: str, owner: str | None = None) -> str:
        """A new empty database (owned by a new role ``owner``, if given); its SQLAlchemy URL over the socket."""
        where = ("-h", str(self.folder), "-p", str(self.port), "-U", "postgres")
        if owner:
            self._run("createuser", *where, owner)
        self._run("createdb", *where, *(("-O", owner) if owner else ()), name)
        return f"postgresql+psycopg://postgres@/{name}?host={self.folder}&port={self.port}"

    def stop(self) -> None:
        try:
            self.pause()
        except subprocess.CalledProcessError:
            pass  # not running
        shutil.rmtree(self.folder, ignore_errors=True)
