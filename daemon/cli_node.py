"""The node's commands (`serve`, `scp`, `worker`, `scheduler`, `web`, `status`, `results`, `show`, `retry`,
`report daily`, `requeue-dead`): flags override the YAML configuration, which is validated once here and passed down."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

from contourqa.qa_models.errors import InputError

if TYPE_CHECKING:
    from datetime import datetime

    from .config import Settings


EXIT_BROKER_UNREACHABLE = 1


def add_node_commands(commands: argparse._SubParsersAction) -> None:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", type=Path, help="YAML configuration file")
    common.add_argument("--home", type=Path, help="folder of the store, database, reports and embedded Redis")
    common.add_argument("--broker", help="Celery broker, redis://HOST:PORT/N (serve: default embedded Redis)")
    common.add_argument("--database", help="SQLAlchemy URL (default: SQLite in --home)")
    common.add_argument("--log-json", action="store_true", default=None, help="log one JSON object per line")
    listen = argparse.ArgumentParser(add_help=False)
    listen.add_argument("--port", type=int, help="SCP port (default 11112; 0 = any free port)")
    listen.add_argument("--ae-title", help="SCP AE title (default CONTOURQA)")
    listen.add_argument("--destination", help="where SRs go when no per-sender destination is set: AET@HOST:PORT")

    serve = commands.add_parser("serve", parents=[common, listen],
                                help="run the whole node: SCP, workers, scheduler and an embedded Redis")
    serve.set_defaults(run=_run_serve)
    scp = commands.add_parser("scp", parents=[common, listen], help="run only the Storage SCP (split mode)")
    scp.set_defaults(run=_run_scp)
    worker = commands.add_parser("worker", parents=[common], help="run a Celery worker (split mode)")
    worker.add_argument("--queues", default="gpu,io", help="comma-separated: gpu (inference), io (export)")
    worker.add_argument("--concurrency", type=int, help="worker processes (default worker.concurrency)")
    worker.add_argument("--name", default=f"worker-{os.getpid()}", help="Celery node name")
    worker.set_defaults(run=_run_worker)
    scheduler = commands.add_parser("scheduler", parents=[common], help="run the periodic sweeps (split mode)")
    scheduler.set_defaults(run=_run_scheduler)
    web = commands.add_parser("web", parents=[common], help="run only the read-only web page (split mode)")
    web.add_argument("--web-port", type=int, help="port (default web.port, else 8480)")
    web.set_defaults(run=_run_web)
    status = commands.add_parser("status", parents=[common], help="queue depth, pending cases, outbox, dead letters")
    status.add_argument("--json", action="store_true")
    status.set_defaults(run=_run_status)
    results = commands.add_parser("results", parents=[common], help="finished cases and their ROIs, newest first")
    results.add_argument("--since", help="finished after: YYYY-MM-DD, or an age such as 24h or 7d")
    results.add_argument("--verdict", choices=("accept", "review", "reject", "failed"))
    results.add_argument("--roi", help="only this ROI name (case-insensitive)")
    results.add_argument("--limit", type=int, default=500, help="at most this many rows (default 500)")
    results.add_argument("--json", action="store_true")
    results.set_defaults(run=_run_results)
    show = commands.add_parser("show", parents=[common], help="one case in full: state, references, ROIs, exports")
    show.add_argument("case_id")
    show.add_argument("--json", action="store_true")
    show.set_defaults(run=_run_show)
    retry = commands.add_parser("retry", parents=[common],
                                help="re-open a failed case; the node assesses it once its images are complete")
    retry.add_argument("case_id")
    retry.set_defaults(run=_run_retry)
    report = commands.add_parser("report", help="write a report: daily (the physicists' QA summary of one day)")
    report_kinds = report.add_subparsers(dest="kind", required=True, metavar="daily")
    daily = report_kinds.add_parser("daily", parents=[common], help="one day's summary as a self-contained HTML file")
    daily.add_argument("--date", help="the day (UTC), YYYY-MM-DD (default today)")
    daily.add_argument("--out", type=Path, help="file to write (default HOME/reports/daily/DATE.html)")
    daily.set_defaults(run=_run_report_daily)
    requeue = commands.add_parser("requeue-dead", parents=[common], help="send dead-lettered SRs again")
    requeue.add_argument("--id", type=int, help="only this outbox item (default: all dead letters)")
    requeue.set_defaults(run=_run_requeue)
    from .cli_monitoring import add_monitoring_commands
    add_monitoring_commands(commands, common)


def node_settings(args: argparse.Namespace) -> "Settings":
    from .config import load_settings
    from .logs import setup_logging

    overrides = {
        "home": str(args.home) if args.home else None, "broker_url": args.broker,
        "database_url": args.database, "log_json": args.log_json,
        "scp.port": getattr(args, "port", None), "scp.ae_title": getattr(args, "ae_title", None),
        "export.default_destination": getattr(args, "destination", None),
    }
    settings = load_settings(args.config, overrides)
    setup_logging(settings.log_level, settings.log_json)
    return settings


def split_mode_settings(args: argparse.Namespace) -> "Settings":
    """Settings of `scp`, `worker` and `scheduler`, which need an external broker."""
    settings = node_settings(args)
    if settings.broker_url is None:
        raise InputError("no broker: give --broker redis://... or broker_url in the configuration "
                         "(only `contourqa serve` starts an embedded Redis)")
    return settings


def _run_serve(args: argparse.Namespace) -> int:
    from .node import serve
    serve(node_settings(args))
    return 0


def _run_scp(args: argparse.Namespace) -> int:
    from .node import run_scp
    settings = split_mode_settings(args)
    run_scp(settings)
    return 0


def _run_worker(args: argparse.Namespace) -> int:
    from .node import run_worker
    settings = split_mode_settings(args)
    queues = [q.strip() for q in args.queues.split(",") if q.strip()]
    if not queues or set(queues) - {"gpu", "io"}:
        raise InputError(f"--queues: expected gpu, io or gpu,io, not {args.queues!r}")
    if args.concurrency is not None and args.concurrency < 1:
        raise InputError("--concurrency must be at least 1")
    return run_worker(settings, queues, args.concurrency or settings.worker.concurrency, args.name)


def _run_scheduler(args: argparse.Namespace) -> int:
    from .node import run_scheduler
    settings = split_mode_settings(args)
    run_scheduler(settings)
    return 0


def _run_web(args: argparse.Namespace) -> int:
    from .node import run_web
    settings = node_settings(args)
    if args.web_port is not None:
        settings = settings.model_copy(update={"web": settings.web.model_copy(update={"port": args.web_port})})
    run_web(settings)
    return 0


def _run_status(args: argparse.Namespace) -> int:
    """Exit 0 when the broker answered, 1 when it did not (the node is down or unreachable)."""
    from .db import open_database
    from .status import format_status, status_report
    settings = node_settings(args)
    broker = settings.broker_url or _embedded_broker(settings)
    report = status_report(open_database(settings.resolved_database_url(), create=False), broker)
    print(json.dumps(report, indent=2) if args.json else format_status(report))
    return 0 if None not in report["queues"].values() else EXIT_BROKER_UNREACHABLE


def _run_requeue(args: argparse.Namespace) -> int:
    from .db import open_database
    from .ledger import requeue_dead
    settings = node_settings(args)
    count = requeue_dead(open_database(settings.resolved_database_url(), create=False), args.id)
    print(f"{count} dead letter(s) back in the outbox")
    return 0


def parse_since(text: str, now: "datetime | None" = None) -> "datetime":
    """A UTC moment from YYYY-MM-DD (midnight UTC) or an age: 90m, 24h, 7d."""
    from datetime import datetime, timedelta, timezone

    now = now or datetime.now(timezone.utc).replace(tzinfo=None)
    units = {"m": "minutes", "h": "hours", "d": "days"}
    if text[-1:] in units and text[:-1].isdigit():
        return now - timedelta(**{units[text[-1]]: int(text[:-1])})
    try:
        return datetime.strptime(text, "%Y-%m-%d")
    except ValueError:
        raise InputError(f"--since {text!r}: expected YYYY-MM-DD or an age such as 24h or 7d") from None


def _run_results(args: argparse.Namespace) -> int:
    from .db import open_database
    from .results import format_results, list_results
    since = parse_since(args.since) if args.since else None
    if args.limit < 1:
        raise InputError("--limit must be at least 1")
    sessions = open_database(node_settings(args).resolved_database_url(), create=False)
    with sessions() as session:
        rows = list_results(session, since, args.verdict, args.roi, args.limit)
    print(json.dumps(rows, indent=2) if args.json else format_results(rows))
    return 0


def _run_show(args: argparse.Namespace) -> int:
    from .db import open_database
    from .results import case_detail, format_case
    sessions = open_database(node_settings(args).resolved_database_url(), create=False)
    with sessions() as session:
        detail = case_detail(session, args.case_id)
    if detail is None:
        raise InputError(f"no case {args.case_id}")
    print(json.dumps(detail, indent=2) if args.json else format_case(detail))
    return 0


def _run_retry(args: argparse.Namespace) -> int:
    from .db import open_database
    from .ledger import case_state, mark_ready_if_complete, reopen
    sessions = open_database(node_settings(args).resolved_database_url(), create=False)
    if not reopen(sessions, args.case_id):
        state = case_state(sessions, args.case_id)
        raise InputError(f"no case {args.case_id}" if state is None
                         else f"case {args.case_id} is {state}; only a failed case can be retried")
    ready = mark_ready_if_complete(sessions, args.case_id)
    print(f"case {args.case_id} re-opened: " + ("its images are complete; the node's next sweep assesses it" if ready
                                                 else "waiting for its images (or the stable age) as a new case would"))
    return 0


def _run_report_daily(args: argparse.Namespace) -> int:
    from datetime import date, datetime, timezone

    from .daily_summary import write_daily_summary
    from .db import open_database
    try:
        day = date.fromisoformat(args.date) if args.date else datetime.now(timezone.utc).date()
    except ValueError:
        raise InputError(f"--date {args.date!r}: expected YYYY-MM-DD") from None
    settings = node_settings(args)
    print(write_daily_summary(settings, open_database(settings.resolved_database_url(), create=False), day, args.out))
    return 0


def _embedded_broker(settings: "Settings") -> str | None:
    """The broker a running `serve` under this home uses, from its effective settings."""
    effective = settings.home / "run" / "settings.json"
    if effective.exists():
        return json.loads(effective.read_text()).get("broker_url")
    return None
