"""The admins' commands: `audit add|list|remove|run` (drift audits), `schedule list` (declared jobs) and
`export-training` (this site's auto-contours with their approved versions, as a training manifest)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from contourqa.qa_models.errors import InputError

from .cli_node import node_settings, parse_since


def add_monitoring_commands(commands: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    audit = commands.add_parser("audit", help="drift audits: add, list, remove, run")
    kinds = audit.add_subparsers(dest="action", required=True, metavar="add|list|remove|run")
    add = kinds.add_parser("add", parents=[common], help="declare an audit the scheduler runs on its cron")
    add.add_argument("name")
    add.add_argument("--cron", required=True, help="five-field crontab in UTC, e.g. '0 7 * * 1' (Mondays 07:00)")
    add.add_argument("--window", default="7d", help="the recent window compared (default 7d)")
    add.add_argument("--reference", default="90d", help="the reference window just before it (default 90d)")
    add.add_argument("--roi", help="only this ROI name (case-insensitive)")
    add.add_argument("--source", help="only this auto-contouring source (as `results` shows it)")
    add.add_argument("--metric", action="append", dest="metrics", metavar="METRIC",
                     help="dice, flags, domain, volume or input; repeat for several (default all)")
    add.add_argument("--threshold", type=float, default=0.001,
                     help="family-wise false-alarm level of one run (default 0.001: on the simulated site one "
                          "daily run in 300 raised a false alarm)")
    add.add_argument("--email", help="notify this address of drift (needs notify.smtp_host)")
    add.add_argument("--webhook", help="POST a JSON notice of drift to this URL")
    add.set_defaults(run=_run_add)
    listing = kinds.add_parser("list", parents=[common], help="the audits and their latest results")
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(run=_run_list)
    remove = kinds.add_parser("remove", parents=[common], help="remove an audit (its reports stay)")
    remove.add_argument("name")
    remove.set_defaults(run=_run_remove)
    run = kinds.add_parser("run", parents=[common], help="run an audit now: exit 0 no drift, 1 drift, 2 error")
    run.add_argument("name")
    run.set_defaults(run=_run_audit)
    schedule = commands.add_parser("schedule", help="the scheduler's declared jobs")
    schedule_kinds = schedule.add_subparsers(dest="action", required=True, metavar="list")
    schedule_list = schedule_kinds.add_parser("list", parents=[common], help="jobs, cron, next and last run")
    schedule_list.add_argument("--json", action="store_true")
    schedule_list.set_defaults(run=_run_schedule_list)
    export = commands.add_parser("export-training", parents=[common],
                                 help="write each auto-contour ROI whose approved version came back as a training "
                                      "manifest for `contourqa train --init-from`")
    export.add_argument("--out", type=Path, required=True, help="manifest CSV to write")
    export.add_argument("--since", help="only cases finished after: YYYY-MM-DD, or an age such as 90d")
    export.set_defaults(run=_run_export_training)


def _sessions(args: argparse.Namespace):
    from .db import open_database
    settings = node_settings(args)
    return settings, open_database(settings.resolved_database_url(), create=False)


def _run_add(args: argparse.Namespace) -> int:
    from .audits import add_audit
    _, sessions = _sessions(args)
    audit = add_audit(sessions, args.name, args.cron, args.window, args.reference, args.roi, args.source,
                      args.metrics, args.threshold, args.email, args.webhook)
    print(f"audit {audit.name} added: cron '{audit.cron}' (UTC), window {audit.window_days:g} d against the "
          f"{audit.reference_days:g} d before; a running scheduler takes it up within a minute")
    return 0


def _run_list(args: argparse.Namespace) -> int:
    from .audits import latest_audit_results
    _, sessions = _sessions(args)
    rows = latest_audit_results(sessions)
    if args.json:
        print(json.dumps(rows, indent=2))
    elif not rows:
        print("no audits (contourqa audit add NAME --cron ...)")
    for row in [] if args.json else rows:
        state = "not run yet" if row["drift"] is None else ("DRIFT" if row["drift"] else "no drift")
        print(f"{row['name']}  cron '{row['cron']}'  last run {row['ran_at'] or '-'}: {state}  {row['summary']}")
    return 0


def _run_remove(args: argparse.Namespace) -> int:
    from .audits import remove_audit
    _, sessions = _sessions(args)
    remove_audit(sessions, args.name)
    print(f"audit {args.name} removed")
    return 0


def _run_audit(args: argparse.Namespace) -> int:
    from .audits import EXIT_DRIFT, EXIT_NO_DRIFT, run_audit
    settings, sessions = _sessions(args)
    run = run_audit(settings, sessions, args.name)
    print(f"{'DRIFT' if run.drift else 'no drift'}: {run.summary}\nreport: {run.report_path}")
    return EXIT_DRIFT if run.drift else EXIT_NO_DRIFT


def _run_schedule_list(args: argparse.Namespace) -> int:
    from .jobs import schedule_table
    settings, sessions = _sessions(args)
    rows = schedule_table(settings, sessions)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    for row in rows:
        last = f"{row['last_run']} {row['last_status']}" if row["last_run"] else "never"
        print(f"{row['job']:<24} cron '{row['cron']}'  next {row['next_run'] or '(when a scheduler runs)'}  "
              f"last {last}  - {row['what']}")
    return 0


def _run_export_training(args: argparse.Namespace) -> int:
    from .approved import training_pairs, write_manifest
    since = parse_since(args.since) if args.since else None
    _, sessions = _sessions(args)
    rows = training_pairs(sessions, since)
    if not rows:
        raise InputError("no auto-contour has an approved version yet: nothing to export (see `approval` in the "
                         "configuration)")
    write_manifest(rows, args.out)
    print(f"{len(rows)} ROI pairs from {len({r['case_id'] for r in rows})} cases written to {args.out}; "
          f"train with: contourqa train --manifest {args.out} --init-from MODEL_DIR --out NEW_MODEL_DIR")
    return 0
