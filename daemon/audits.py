"""Drift audits: an admin declares one (`contourqa audit add`), the scheduler runs it on its cron, and each
run compares the recent window of results with the reference window before it, per ROI and per source:

- predicted Dice: Kolmogorov-Smirnov and population stability index, and the daily mean on a CUSUM chart
  with limits from the reference window (metric ``dice``);
- the share of ROIs flagged review or reject (``flags``) and outside the model's domain (``domain``):
  exact binomial tests against the reference rate;
- ROI volume (``volume``): Kolmogorov-Smirnov;
- per source, the images (``input``): scanner and field strength (chi-square), pixel spacing, slice
  thickness and the intensity percentiles inside the body (Kolmogorov-Smirnov).

Drift is any p-value below the audit's family-wise level over the number of tests run (Bonferroni), or a
CUSUM beyond its limit. Each run writes an HTML report and a JSON beside it, is recorded in
``audit_runs``, and notifies by e-mail and/or webhook when configured (a failed notice is logged).
"""

from __future__ import annotations

import json
import logging
import re
from collections import defaultdict
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import delete, select
from sqlalchemy.orm import sessionmaker

from contourqa.qa_models.atomic import write_text_atomically
from contourqa.qa_models.errors import InputError
from contourqa.reporting.agreement import site_calibration
from contourqa.reporting.charts import control_chart
from contourqa.reporting.drift import (Finding, compare_categories, compare_distributions, compare_rate, cusum,
                                       decide)
from contourqa.reporting.html import render_page

from .config import Settings
from .daily_summary import write_index
from .db import Audit, AuditRun, Case, CaseState, RoiResult, utcnow
from .image_profile import CATEGORICAL, NUMERIC
from .notify import notify

log = logging.getLogger(__name__)

METRICS = ("dice", "flags", "domain", "volume", "input")
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
FLAGGED = ("review", "reject")
EXIT_NO_DRIFT, EXIT_DRIFT = 0, 1


def parse_days(text: str, option: str) -> float:
    """A duration such as 7d, 36h or 90d, in days."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([dh])", text.strip())
    if not match or float(match[1]) <= 0:
        raise InputError(f"{option} {text!r}: expected a duration such as 7d or 36h")
    return float(match[1]) / (24 if match[2] == "h" else 1)


DAY_NAMES = ("sun", "mon", "tue", "wed", "thu", "fri", "sat", "sun")


def cron_trigger(expression: str):
    """The APScheduler trigger of a five-field crontab expression (UTC); an InputError when invalid.

    Day-of-week numbers are read as crontab reads them (0 or 7 Sunday, 1 Monday) and handed to APScheduler
    3 as names: its own numbers start at Monday = 0, so '0 7 * * 1' would otherwise fire on Tuesdays."""
    from apscheduler.triggers.cron import CronTrigger
    fields = expression.split()
    if len(fields) == 5:
        fields[4] = re.sub(r"(?<![/\d])\d+", lambda m: DAY_NAMES[int(m[0])] if int(m[0]) < 8 else m[0], fields[4])
    try:
        if len(fields) != 5:
            raise ValueError(f"wrong number of fields; got {len(fields)}, expected 5")
        return CronTrigger(minute=fields[0], hour=fields[1], day=fields[2], month=fields[3], day_of_week=fields[4],
                           timezone="UTC")
    except ValueError as error:
        raise InputError(f"--cron {expression!r}: {error} (expected five fields, e.g. '0 7 * * 1')") from None


def add_audit(sessions: sessionmaker, name: str, cron: str, window: str, reference: str, roi: str | None = None,
              source: str | None = None, metrics: list[str] | None = None, alpha: float = 0.001,
              email: str | None = None, webhook: str | None = None) -> Audit:
    if not NAME.match(name):
        raise InputError(f"audit name {name!r}: letters, digits, '.', '_' and '-', at most 64")
    cron_trigger(cron)
    unknown = set(metrics or []) - set(METRICS)
    if unknown:
        raise InputError(f"--metric {', '.join(sorted(unknown))}: expected some of {', '.join(METRICS)}")
    if not 0 < alpha < 1:
        raise InputError("--threshold is the family-wise false-alarm level: between 0 and 1, e.g. 0.001")
    audit = Audit(name=name, cron=cron, window_days=parse_days(window, "--window"),
                  reference_days=parse_days(reference, "--reference"), roi=roi, source=source,
                  metrics=list(metrics or METRICS), alpha=alpha, notify_email=email, notify_webhook=webhook)
    with sessions() as session:
        if session.get(Audit, name) is not None:
            raise InputError(f"an audit named {name} exists; remove it first (contourqa audit remove {name})")
        session.add(audit)
        session.commit()
    return audit


def remove_audit(sessions: sessionmaker, name: str) -> None:
    with sessions() as session:
        if session.execute(delete(Audit).where(Audit.name == name)).rowcount == 0:
            raise InputError(f"no audit named {name}")
        session.commit()


def list_audits(sessions: sessionmaker) -> list[tuple[Audit, AuditRun | None]]:
    with sessions() as session:
        audits = list(session.scalars(select(Audit).order_by(Audit.name)))
        return [(a, latest_run(session, a.name)) for a in audits]


def latest_run(session, name: str) -> AuditRun | None:
    return session.scalar(select(AuditRun).where(AuditRun.audit == name).order_by(AuditRun.ran_at.desc()).limit(1))


def get_audit(sessions: sessionmaker, name: str) -> Audit:
    with sessions() as session:
        audit = session.get(Audit, name)
    if audit is None:
        raise InputError(f"no audit named {name}")
    return audit


@dataclass
class Observation:
    """One ROI result as the audit sees it."""

    finished_at: datetime
    roi: str
    source: str
    verdict: str
    dice: float | None
    inside: bool | None
    volume_ml: float
    case_id: str
    profile: dict | None
    real_dice: float | None = None  # once the approved version came back


def observations(sessions: sessionmaker, start: datetime, end: datetime, audit: Audit) -> list[Observation]:
    # only the columns an observation holds: whole rows would decode every ROI's screens and warnings (JSON)
    query = (select(Case.finished_at, RoiResult.name, Case.source_software, RoiResult.verdict, RoiResult.predicted_dice,
                    RoiResult.domain_inside, RoiResult.volume_ml, Case.case_id, Case.image_profile, RoiResult.real_dice)
             .join(RoiResult, RoiResult.case_id == Case.case_id)
             .where(Case.state == CaseState.DONE.value, Case.finished_at >= start, Case.finished_at < end))
    with sessions() as session:
        rows = session.execute(query).all()
    result = [Observation(finished, roi, source or "unknown", *rest) for finished, roi, source, *rest in rows]
    return [o for o in result if (audit.roi is None or o.roi.lower() == audit.roi.lower())
            and (audit.source is None or o.source == audit.source)]


def _by_day(items: list[Observation]) -> dict[date, np.ndarray]:
    """Predicted Dice values per day."""
    days: dict[date, list[float]] = defaultdict(list)
    for o in items:
        if o.dice is not None:
            days[o.finished_at.date()].append(o.dice)
    return {d: np.array(v) for d, v in sorted(days.items())}


def _with_real_dice(items: list[Observation]) -> list[Observation]:
    """The ROIs with both a prediction and, their approved version having come back, a real Dice."""
    return [o for o in items if o.dice is not None and o.real_dice is not None]


def _dice_findings(group: str, old: list[Observation], new: list[Observation]) -> tuple[list[Finding], dict]:
    """Predicted Dice (KS, PSI, CUSUM of the daily mean, its control chart) and, where approved contours
    came back, whether the model's error against the real Dice grew."""
    findings = compare_distributions(group, "predicted Dice", np.array([o.dice for o in old if o.dice is not None]),
                                     np.array([o.dice for o in new if o.dice is not None]), with_psi=True)
    old_days, new_days = _by_day(old), _by_day(new)
    found, limits = cusum(group, "predicted Dice", list(old_days.values()), list(new_days.values()))
    findings += found
    old_error, new_error = (np.array([abs(o.dice - o.real_dice) for o in _with_real_dice(items)])
                            for items in (old, new))
    findings += compare_distributions(group, "error against the real Dice", old_error, new_error, only_larger=True)
    if not limits:
        return findings, {}
    days = {**old_days, **new_days}
    return findings, control_chart([d.strftime("%m-%d") for d in days], [float(v.mean()) for v in days.values()],
                                   limits["centre"], limits["low"], limits["high"])


def _rate_findings(group: str, metric: str, old: list[bool], new: list[bool]) -> list[Finding]:
    return compare_rate(group, metric, sum(old), len(old), sum(new), len(new))


def _roi_findings(group: str, old: list[Observation], new: list[Observation], metrics: list[str]) -> tuple[list[Finding], dict]:
    findings: list[Finding] = []
    chart: dict = {}
    if "dice" in metrics:
        findings, chart = _dice_findings(group, old, new)
    if "flags" in metrics:
        findings += _rate_findings(group, "flagged (review or reject)", [o.verdict in FLAGGED for o in old],
                                   [o.verdict in FLAGGED for o in new])
    if "domain" in metrics and any(o.inside is not None for o in old + new):
        findings += _rate_findings(group, "outside the model's domain", [not o.inside for o in old if o.inside is not None],
                                   [not o.inside for o in new if o.inside is not None])
    if "volume" in metrics:
        findings += compare_distributions(group, "ROI volume (ml)", np.array([o.volume_ml for o in old]),
                                          np.array([o.volume_ml for o in new]))
    return findings, chart


def _case_profiles(items: list[Observation]) -> list[dict]:
    """One profile per case (a case has several ROIs, but one image series)."""
    return list({o.case_id: o.profile for o in items if o.profile}.values())


def _input_findings(group: str, old: list[Observation], new: list[Observation]) -> list[Finding]:
    old_p, new_p = _case_profiles(old), _case_profiles(new)
    findings: list[Finding] = []
    for key in CATEGORICAL:
        findings += compare_categories(group, f"input: {key}", [str(p.get(key)) for p in old_p],
                                       [str(p.get(key)) for p in new_p])
    for key in NUMERIC:
        old_v = np.array([p[key] for p in old_p if p.get(key) is not None], dtype=float)
        new_v = np.array([p[key] for p in new_p if p.get(key) is not None], dtype=float)
        findings += compare_distributions(group, f"input: {key}", old_v, new_v)
    return findings


def audit_findings(audit: Audit, old: list[Observation], new: list[Observation]) -> tuple[list[Finding], dict, bool]:
    """Every test of the audit, the control charts per ROI and source, and whether any shows drift."""
    groups: dict[tuple[str, str], tuple[list, list]] = defaultdict(lambda: ([], []))
    for o in old:
        groups[(o.roi, o.source)][0].append(o)
    for o in new:
        groups[(o.roi, o.source)][1].append(o)
    findings, charts = [], {}
    for (roi, source), (o, n) in sorted(groups.items()):
        found, chart = _roi_findings(f"{roi} / {source}", o, n, audit.metrics)
        findings += found
        if chart:
            charts[f"{roi} / {source}"] = chart
    if "input" in audit.metrics:
        sources = sorted({o.source for o in old + new})
        for source in sources:
            findings += _input_findings(source, [o for o in old if o.source == source],
                                        [o for o in new if o.source == source])
    return findings, charts, decide(findings, audit.alpha)


def run_audit(settings: Settings, sessions: sessionmaker, name: str, now: datetime | None = None) -> AuditRun:
    """Run one audit now: the report (HTML and JSON), its row in ``audit_runs``, and the notice."""
    audit = get_audit(sessions, name)
    now = now or utcnow()
    split = now - timedelta(days=audit.window_days)
    start = split - timedelta(days=audit.reference_days)
    items = observations(sessions, start, now, audit)
    old, new = [o for o in items if o.finished_at < split], [o for o in items if o.finished_at >= split]
    findings, charts, drift = audit_findings(audit, old, new)
    limits = (settings.assess.reject_below, settings.assess.review_below)
    calibration = {label: site_calibration([o.real_dice for o in pairs], [o.dice for o in pairs], *limits,
                                           f"approved ROIs of the {label} window")
                   for label, pairs in (("reference", _with_real_dice(old)), ("recent", _with_real_dice(new)))}
    flagged = [f for f in findings if f.drift]
    if not findings:
        summary = (f"not enough results to compare ({len(new)} ROIs in the window, {len(old)} in the reference; "
                   f"at least 5 and 20 per group)")
    elif drift:
        summary = "drift: " + "; ".join(f"{f.group} {f.metric} ({f.summary})" for f in flagged[:5])
    else:
        summary = f"no drift in {len(findings)} tests"
    data = {"audit": name, "ran_at": now.isoformat(timespec="seconds"), "drift": drift, "summary": summary,
            "window": {"start": split.isoformat(timespec="seconds"), "end": now.isoformat(timespec="seconds"),
                       "rois": len(new)},
            "reference": {"start": start.isoformat(timespec="seconds"), "end": split.isoformat(timespec="seconds"),
                          "rois": len(old)},
            "definition": {"cron": audit.cron, "window_days": audit.window_days, "reference_days": audit.reference_days,
                           "roi": audit.roi, "source": audit.source, "metrics": audit.metrics, "alpha": audit.alpha},
            "tests": len(findings), "findings": [f.as_dict() for f in findings],
            "calibration": {k: None if v is None else {"n": v["n"], "mae": v["mae"], "wrong_share": v["wrong_share"]}
                            for k, v in calibration.items()}}
    folder = settings.reports_dir / "audits" / name
    folder.mkdir(parents=True, exist_ok=True)
    stem = now.strftime("%Y-%m-%dT%H%M")
    json_path = write_text_atomically(folder / f"{stem}.json", json.dumps(data, indent=2))
    report = render_page("audit.html.j2", folder / f"{stem}.html", **{**data, "calibration": calibration},
                         charts=charts, flagged=[f.as_dict() for f in flagged])
    write_index(settings.reports_dir)
    run = AuditRun(audit=name, ran_at=now, drift=drift, summary=summary, report_path=str(report),
                   json_path=str(json_path))
    with sessions() as session:
        session.add(run)
        session.commit()
    log.info("audit %s: %s", name, "drift" if drift else "no drift")
    if drift and (audit.notify_email or audit.notify_webhook):
        notify(settings, audit.notify_email, audit.notify_webhook, f"contourqa audit {name}: drift", summary,
               {"audit": name, "drift": True, "summary": summary, "report": str(report)})
    return run


def latest_audit_results(sessions: sessionmaker) -> list[dict[str, Any]]:
    """Each audit's latest run, for the daily summary and the web page."""
    return [{"name": a.name, "cron": a.cron, "drift": r.drift if r else None,
             "ran_at": r.ran_at.isoformat(timespec="minutes") if r else None, "summary": r.summary if r else "not run yet",
             "report": Path(r.report_path).name if r else None} for a, r in list_audits(sessions)]
