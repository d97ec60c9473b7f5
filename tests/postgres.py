"""A real PostgreSQL server for the tests: Debian's binaries, a throw-away cluster on a free port, reached
over its Unix socket. PostgreSQL refuses to run as root, so as root it runs as the `postgres` user."""

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
    def __init__(self) -> None:
        found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
        if not found:
            raise RuntimeError("PostgreSQL is not installed; tests/run_all.sh installs it")
        self.bin = found[-1].parent
        # under /tmp itself (not tempfile.tempdir, which the in-process SCP points at its incoming folder):
        # the server user must reach it
        self.folder = Path(tempfile.mkdtemp(prefix="contourqa-pg-", dir="/tmp"))
        self.port = free_port()

    def start(self) -> "PostgresServer":
        if os.geteuid() == 0:
            shutil.chown(self.folder, "postgres")
        subprocess.run(_as_server_user([str(self.bin / "initdb"), "-D", str(self.folder / "data"), "-A", "trust",
                                        "-U", "postgres"]), check=True, capture_output=True)
        subprocess.run(_as_server_user([str(self.bin / "pg_ctl"), "-D", str(self.folder / "data"), "-w", "-l",
                                        str(self.folder / "server.log"), "-o",
                                        f"-p {self.port} -k {self.folder} -c listen_addresses=''", "start"]),
                       check=True, capture_output=True)
        return self

    def create_database(self, name: str) -> str:
        """A new empty database; its SQLAlchemy URL."""
        subprocess.run(_as_server_user([str(self.bin / "createdb"), "-h", str(self.folder), "-p", str(self.port),
                                        "-U", "postgres", name]), check=True, capture_output=True)
        return f"postgresql+psycopg://postgres@/{name}?host={self.folder}&port={self.port}"

    def stop(self) -> None:
        subprocess.run(_as_server_user([str(self.bin / "pg_ctl"), "-D", str(self.folder / "data"), "-m", "fast",
                                        "stop"]), capture_output=True)
        shutil.rmtree(self.folder, ignore_errors=True)
