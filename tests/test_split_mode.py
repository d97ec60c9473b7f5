"""Split mode as an operator starts it: `contourqa scp`, `worker` and `scheduler` launched at the same
moment on a home that does not exist yet, sharing one real Redis. Every process must come up, whichever
creates the folders and the schema first; a second SCP on the same home is refused."""

import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from contourqa.daemon.embedded_redis import EmbeddedRedis
from node_harness import wait_for

STARTS = 3  # the schema race itself is tested ten processes at a time below


@pytest.fixture(scope="module")
def broker(tmp_path_factory):
    redis = EmbeddedRedis(tmp_path_factory.mktemp("redis")).start()
    yield redis.url
    redis.stop()


def start_together(config, broker, logs) -> dict[str, subprocess.Popen]:
    commands = {"scp": ["scp"], "worker": ["worker", "--queues", "gpu,io"], "scheduler": ["scheduler"]}
    return {name: subprocess.Popen([sys.executable, "-m", "contourqa.cli", *args, "--config", str(config),
                                    "--broker", broker],
                                   stdout=open(logs / f"{name}.log", "w"), stderr=subprocess.STDOUT)
            for name, args in commands.items()}


def log_of(logs, name) -> str:
    return (logs / f"{name}.log").read_text(errors="replace")


@pytest.mark.slow
def test_scp_worker_and_scheduler_started_at_once_on_fresh_homes_all_come_up(tmp_path, broker):
    for attempt in range(STARTS):
        home, logs = tmp_path / f"home{attempt}", tmp_path / f"logs{attempt}"
        logs.mkdir()
        config = tmp_path / f"contourqa{attempt}.yaml"
        config.write_text(yaml.safe_dump({
            "home": str(home), "scp": {"port": 0, "min_free_disk_mb": 0}, "worker": {"use_model": False},
            "scheduler": {"sweep_interval_s": 0.5}}))
        assert not home.exists()
        processes = start_together(config, broker, logs)
        try:
            def up() -> bool:
                exited = {n: p.returncode for n, p in processes.items() if p.poll() is not None}
                assert not exited, f"start {attempt}: {exited} exited: " + " | ".join(
                    log_of(logs, n).strip()[-300:] for n in exited)
                return ((home / "run" / "scp.port").exists() and " ready." in log_of(logs, "worker")
                        and "sweep every" in log_of(logs, "scheduler"))
            wait_for(up, 90, f"scp, worker and scheduler of start {attempt}")
            status = subprocess.run([sys.executable, "-m", "contourqa.cli", "status", "--config", str(config),
                                     "--broker", broker, "--json"], capture_output=True, text=True, timeout=60)
            assert status.returncode == 0, status.stderr
            assert {"store", "reports", "incoming", "run"} <= {p.name for p in home.iterdir()}
            if attempt == 0:  # a second SCP on the same home, by mistake: refused before it clears anything
                (home / "incoming" / "transfer-in-progress.dcm").write_bytes(b"DICM")
                second = subprocess.run([sys.executable, "-m", "contourqa.cli", "scp", "--config", str(config),
                                         "--broker", broker], capture_output=True, text=True, timeout=60)
                assert second.returncode == 2 and second.stderr.strip().splitlines() == [
                    f"contourqa: error: {home}: another contourqa SCP is running on this home; stop it first, "
                    "or give this one another --home"], second.stderr[-2000:]
                assert (home / "incoming" / "transfer-in-progress.dcm").exists()
        finally:
            for process in processes.values():
                process.send_signal(signal.SIGTERM)
            for process in processes.values():
                process.wait(timeout=60)


def test_a_partial_file_of_a_transfer_cut_off_before_a_restart_is_removed_at_start(tmp_path, broker):
    home = tmp_path / "home"
    (home / "incoming").mkdir(parents=True)
    leftover = home / "incoming" / "tmpk2x8a1"  # what an association killed mid-transfer leaves
    leftover.write_bytes(b"\0" * 128 + b"DICM" + b"\x02\x00" * 40)
    config = tmp_path / "contourqa.yaml"
    config.write_text(yaml.safe_dump({"home": str(home), "scp": {"port": 0, "min_free_disk_mb": 0}}))
    scp = subprocess.Popen([sys.executable, "-m", "contourqa.cli", "scp", "--config", str(config), "--broker", broker],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_for(lambda: (home / "run" / "scp.port").exists() or scp.poll() is not None, 60, "the SCP to listen")
        assert scp.poll() is None
        assert not leftover.exists()
    finally:
        scp.send_signal(signal.SIGTERM)
        output = scp.communicate(timeout=60)[0]
    assert "removed 1 partial file(s) of interrupted transfers" in output


OPEN_DATABASE = "from contourqa.daemon.db import open_database; open_database({url!r})"


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_ten_processes_creating_the_schema_at_once_all_succeed(kind, tmp_path, postgres):
    for attempt in range(3):
        url = (f"sqlite:///{tmp_path / f'fresh{attempt}' / 'contourqa.sqlite'}" if kind == "sqlite"
               else postgres.create_database(f"fresh{attempt}"))
        processes = [subprocess.Popen([sys.executable, "-c", OPEN_DATABASE.format(url=url)], stderr=subprocess.PIPE,
                                      text=True) for _ in range(10)]
        errors = [p.communicate(timeout=120)[1] for p in processes]
        assert [p.returncode for p in processes] == [0] * 10, [e for e in errors if e][:1]


# the worker command with one more consumer step, which fails as a library error would once connected
FAILING_WORKER = """
import sys
from pathlib import Path
from celery import bootsteps
from contourqa.cli import main
from contourqa.daemon.celery_app import app

class Failing(bootsteps.StartStopStep):
    requires = ("celery.worker.consumer.tasks:Tasks",)
    def start(self, consumer):
        raise AttributeError("'NoneType' object has no attribute 'hostname'")

app.steps["consumer"].add(Failing)
sys.exit(main(sys.argv[1:]))
"""


def test_a_worker_that_celery_stops_for_an_unrecoverable_error_exits_nonzero_and_a_warm_shutdown_exits_0(
        tmp_path, broker):
    """A supervisor that restarts failures (systemd Restart=on-failure) must see a dead worker as one."""
    def worker(name: str, code: list[str]) -> tuple[subprocess.Popen, Path]:
        log = tmp_path / f"{name}.log"
        return subprocess.Popen([sys.executable, *code, "worker", "--queues", "io", "--home", str(tmp_path / name),
                                 "--broker", broker], stdout=open(log, "w"), stderr=subprocess.STDOUT), log

    failing, failing_log = worker("failing", ["-c", FAILING_WORKER])
    assert failing.wait(timeout=90) == 1, failing_log.read_text()[-2000:]
    assert "Unrecoverable error: AttributeError" in failing_log.read_text()

    healthy, log = worker("healthy", ["-m", "contourqa.cli"])
    wait_for(lambda: " ready." in log.read_text(errors="replace") or healthy.poll() is not None, 90,
             "the worker to come up")
    assert healthy.poll() is None, log.read_text()[-2000:]
    healthy.send_signal(signal.SIGTERM)
    assert healthy.wait(timeout=60) == 0, log.read_text()[-2000:]


def test_a_lost_broker_is_logged_in_one_line_without_the_traceback_celery_attaches():
    code = ("import logging\nfrom contourqa.daemon.logs import setup_logging, BROKER_LOSS_LOGGER\nsetup_logging()\n"
            "try:\n    raise ConnectionError('Error 111 connecting to 127.0.0.1:6379. Connection refused.')\n"
            "except ConnectionError:\n    logging.getLogger(BROKER_LOSS_LOGGER).warning("
            "'consumer: Connection to broker lost. Trying to re-establish the connection...', exc_info=True)\n")
    logged = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60).stderr
    assert len(logged.splitlines()) == 1 and "Traceback" not in logged, logged
    assert logged.rstrip().endswith("re-establish the connection... (ConnectionError: Error 111 connecting to "
                                    "127.0.0.1:6379. Connection refused.)"), logged
