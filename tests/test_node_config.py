"""The node's configuration: one YAML file validated at start with one-line messages; flags override it."""

from __future__ import annotations

import shlex
import socket
from pathlib import Path

import pytest
import yaml

from contourqa.cli import build_parser
from contourqa.daemon.config import Destination, ExportSettings, load_settings
from contourqa.daemon.db import open_database
from contourqa.qa_models.errors import InputError
from conftest import run_cli

EXAMPLE = Path(__file__).resolve().parents[1] / "deploy" / "contourqa.example.yaml"


def test_the_example_configuration_in_deploy_is_valid():
    settings = load_settings(EXAMPLE)
    assert settings.scp.ae_title == "CONTOURQA"
    assert settings.export.destination_for("TPS_ECLIPSE") == Destination.parse("TPS_QA@tps.example.org:104")
    assert settings.export.destination_for("SOMEONE_ELSE") == settings.export.default_destination


def test_flags_override_the_file(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("scp: {port: 104, ae_title: FROMFILE}\n")
    settings = load_settings(config, {"scp.port": 11112, "export.default_destination": "DEST@host:4242"})
    assert (settings.scp.port, settings.scp.ae_title) == (11112, "FROMFILE")
    assert str(settings.export.default_destination) == "DEST@host:4242"


@pytest.mark.parametrize("text, message", [
    ("scp: {port: 70000}", "scp.port"),
    ("scp: {ae_title: 'THIS_TITLE_IS_TOO_LONG'}", "scp.ae_title"),
    ("export: {default_destination: 'nohostport'}", "AET@HOST:PORT"),
    ("worker: {soft_time_limit_s: 100, time_limit_s: 50}", "time_limit_s must be longer"),
    ("scpp: {port: 1}", "scpp: Extra inputs are not permitted"),
    ("[1, 2]", "must be a mapping"),
    ("scp: {port: [", "not valid YAML"),
])
def test_invalid_configuration_is_one_clear_line(tmp_path, text, message):
    config = tmp_path / "c.yaml"
    config.write_text(text)
    with pytest.raises(InputError, match=None) as error:
        load_settings(config)
    assert message in str(error.value) and "\n" not in str(error.value)


def test_serve_with_a_bad_configuration_exits_2_with_one_line(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("scp: {port: abc}\n")
    result = run_cli("serve", "--config", config)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "scp.port" in result.stderr


def test_split_mode_without_a_broker_is_refused(tmp_path):
    result = run_cli("worker", "--home", tmp_path)
    assert result.returncode == 2 and "no broker" in result.stderr


def test_status_of_a_home_without_a_database_is_one_line(tmp_path):
    result = run_cli("status", "--home", tmp_path / "nothing")
    assert result.returncode == 2 and "no contourqa database" in result.stderr


def test_backoff_doubles_up_to_the_cap():
    export = ExportSettings(initial_delay_s=5, max_delay_s=60)
    assert [export.delay_after(n) for n in range(1, 7)] == [5, 10, 20, 40, 60, 60]


def test_a_port_already_in_use_is_named_in_one_line(tmp_path):
    with socket.socket() as blocker:
        blocker.bind(("0.0.0.0", 0))
        blocker.listen()
        port = blocker.getsockname()[1]
        result = run_cli("scp", "--home", tmp_path / "home", "--port", str(port), "--broker", "redis://127.0.0.1:9/0")
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines[-1] == f"contourqa: error: cannot listen on 0.0.0.0:{port}: Address already in use"
    assert "listening" not in result.stderr


def test_status_of_a_node_that_is_not_running_exits_1(tmp_path):
    open_database(f"sqlite:///{tmp_path / 'home' / 'contourqa.sqlite'}")
    result = run_cli("status", "--home", tmp_path / "home")
    assert result.returncode == 1, result.stderr
    assert "unreachable" in result.stdout


def test_docker_compose_starts_on_a_valid_configuration_with_commands_that_parse():
    deploy = EXAMPLE.parent
    compose = yaml.safe_load((deploy / "docker-compose.yml").read_text())
    mount = next(v for v in compose["x-node"]["volumes"] if ":/etc/contourqa/contourqa.yaml" in v)
    settings = load_settings(deploy / mount.split(":")[0])
    assert settings.scp.port == 11112 and settings.export.default_destination is None
    assert "POSTGRES_PASSWORD=" in (deploy / ".env.example").read_text()
    parser = build_parser()
    for name in ("scp", "scheduler", "gpu-worker", "io-worker"):
        command = [part.replace("${POSTGRES_PASSWORD}", "secret") for part in compose["services"][name]["command"]]
        args = parser.parse_args(command)
        assert args.config == Path("/etc/contourqa/contourqa.yaml") and args.database.startswith("postgresql+psycopg://")


SPLIT_UNITS = {"contourqa-scp.service": "scp", "contourqa-scheduler.service": "scheduler",
               "contourqa-worker@.service": "gpu-worker", "contourqa-io-worker.service": "io-worker"}


def test_the_systemd_units_run_exactly_the_processes_the_compose_file_runs():
    """The compose file's commands are the tested ones (tests/test_split_deployment.py runs them); the units
    must run the same commands, with the broker and database from their environment file."""
    deploy = EXAMPLE.parent
    compose = yaml.safe_load((deploy / "docker-compose.yml").read_text())
    environment = dict(line.split("=", 1) for line in (deploy / "contourqa.env.example").read_text().splitlines()
                       if line and not line.startswith("#"))
    assert set(SPLIT_UNITS.values()) == {name for name, service in compose["services"].items() if "build" in service}
    for unit, service in SPLIT_UNITS.items():
        text = (deploy / unit).read_text()
        assert "EnvironmentFile=/etc/contourqa/contourqa.env" in text.splitlines()
        exec_start = shlex.split(next(line for line in text.splitlines() if line.startswith("ExecStart="))
                                 .removeprefix("ExecStart="))
        assert exec_start[0] == "/usr/local/bin/contourqa"
        rendered = [environment.get(part[2:-1], part) if part.startswith("${") else part for part in exec_start[1:]]
        expected = [part.replace("${POSTGRES_PASSWORD}", "change-this-password")
                    for part in compose["services"][service]["command"]]
        assert rendered == expected, unit


def test_a_database_whose_driver_is_not_installed_is_one_line(tmp_path):
    result = run_cli("status", "--home", tmp_path, "--database", "postgresql+pg8000://contourqa@localhost/contourqa")
    assert result.returncode == 2 and "driver of postgresql+pg8000 is not installed" in result.stderr
    assert "contourqa[postgresql]" in result.stderr and "Traceback" not in result.stderr
