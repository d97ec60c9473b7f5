"""The physicists' daily QA summary: one self-contained HTML file per day (UTC), readable offline and
printable, with an index of all days; written by `contourqa report daily` and by the scheduler each
morning for the days not yet written (`job_runs`: a restart neither skips nor repeats a day, and of two
schedulers only one writes a day)."""

from __future__ import annotations

import logging
from collections import Counter, defaultdict
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from contourqa.reporting.agreement import site_calibration
from contourqa.reporting.charts import bars, control_chart
from contourqa.reporting.html import render_page

from . import ledger
from .config import Settings
from .db import Case, CaseState, Instance, JobRun, RoiResult, utcnow
from .jobs import claim, finish_run
from .results import reason_text

log = logging.getLogger(__name__)

JOB = "daily-summary"
TREND_DAYS = 90
RECENT_DAYS = 30
FLAGGED = ("review", "reject")


def summary_path(reports_dir: Path, day: date) -> Path:
    return reports_dir / "daily" / f"{day.isoformat()}.html"


def _bounds(day: date) -> tuple[datetime, datetime]:
    start = datetime.combine(day, datetime.min.time())
    return start, start + timedelta(days=1)


def _patient_and_study_date(path: str) -> tuple[str, str]:
    """From the stored structure set's header; the summary is for the clinic, the log never sees them."""
    try:
        header = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["PatientID", "StudyDate"])
        return str(header.get("PatientID", "") or ""), str(header.get("StudyDate", "") or "")
    except (OSError, ValueError, pydicom.errors.InvalidDicomError):
        return "", ""


def _rows_of_day(session: Session, start: datetime, end: datetime) -> list[tuple[Case, RoiResult]]:
    return list(session.execute(select(Case, RoiResult).join(RoiResult, RoiResult.case_id == Case.case_id)
                                .where(Case.finished_at >= start, Case.finished_at < end)
                                .order_by(Case.finished_at, RoiResult.roi_number)).all())


def _trend(session: Session, day: date, name_of: str, value: str) -> dict[str, Any]:
    """Daily mean predicted Dice of one ROI over the 90 days up to ``day`` with control limits (mean of the
    daily means +- 3 standard deviations), and the mean over the last 30 and 90 days."""
    start, end = _bounds(day - timedelta(days=TREND_DAYS - 1))[0], _bounds(day)[1]
    column = RoiResult.name if name_of == "roi" else Case.source_software
    rows = session.execute(select(Case.finished_at, RoiResult.predicted_dice)
                           .join(RoiResult, RoiResult.case_id == Case.case_id)
                           .where(Case.finished_at >= start, Case.finished_at < end, column == value,
                                  RoiResult.predicted_dice.is_not(None))).all()
    by_day: dict[date, list[float]] = defaultdict(list)
    for finished, dice in rows:
        by_day[finished.date()].append(dice)
    days = [day - timedelta(days=n) for n in range(TREND_DAYS - 1, -1, -1)]
    means = [float(np.mean(by_day[d])) if by_day.get(d) else None for d in days]
    present = np.array([m for m in means if m is not None])
    if present.size == 0:
        return {}
    centre = float(present.mean())
    spread = float(present.std(ddof=1)) if present.size > 1 else 0.0
    recent = [v for d in days[-RECENT_DAYS:] for v in by_day.get(d, [])]
    chart = control_chart([d.strftime("%m-%d") for d in days], means, centre, centre - 3 * spread,
                          centre + 3 * spread)
    outside = sum(p["outside"] for p in chart["points"])
    return {"chart": chart, "centre": centre, "low": centre - 3 * spread, "high": centre + 3 * spread,
            "mean_30": float(np.mean(recent)) if recent else None, "n_30": len(recent),
            "mean_90": float(np.mean([v for values in by_day.values() for v in values])), "n_90": len(rows),
            "days_outside": outside,
            "text": (f"daily mean predicted Dice of {value or 'unknown source'} over {TREND_DAYS} days: centre "
                     f"{centre:.3f}, limits {centre - 3 * spread:.3f}-{centre + 3 * spread:.3f}, "
                     f"{outside} day(s) outside")}


def _distribution(values: list[float], label: str) -> dict[str, Any]:
    array = np.array(values)
    return {"n": len(values), "median": float(np.median(array)), "p05": float(np.percentile(array, 5)),
            "p95": float(np.percentile(array, 95)), "chart": bars(array, 0.0, 1.0, 20, "{:.2f}"),
            "text": f"histogram of {len(values)} predicted Dice values of {label}, median {np.median(array):.3f}"}


def _calibration(session: Session, day: date, thresholds: tuple[float, float]) -> dict[str, Any] | None:
    """Predicted against real Dice over the 90 days up to ``day``: the ROIs whose approved version came back."""
    start, end = _bounds(day - timedelta(days=TREND_DAYS - 1))[0], _bounds(day)[1]
    pairs = session.execute(select(RoiResult.real_dice, RoiResult.predicted_dice)
                            .join(Case, RoiResult.case_id == Case.case_id)
                            .where(Case.finished_at >= start, Case.finished_at < end, RoiResult.real_dice.is_not(None),
                                   RoiResult.predicted_dice.is_not(None))).all()
    return site_calibration([r for r, _ in pairs], [p for _, p in pairs], *thresholds,
                            f"ROIs approved in the {TREND_DAYS} days up to {day.isoformat()}")


def summary_data(session: Session, day: date, thresholds: tuple[float, float] = (0.75, 0.8)) -> dict[str, Any]:
    """Everything the day's page shows; ``thresholds``: the reject and review limits of predicted Dice."""
    start, end = _bounds(day)
    rows = _rows_of_day(session, start, end)
    received = int(session.scalar(select(func.count()).select_from(Case)
                                  .where(Case.created_at >= start, Case.created_at < end)))
    finished = list(session.scalars(select(Case).where(Case.finished_at >= start, Case.finished_at < end,
                                                       Case.approval.is_(None))))
    failed = [c for c in finished if c.state == CaseState.FAILED.value]
    structures = {c.case_id: session.get(Instance, c.structure_instance_id) for c in finished}
    flagged, identities = [], {}
    for case, roi in rows:
        if roi.verdict in FLAGGED:
            if case.case_id not in identities:
                instance = structures.get(case.case_id)
                identities[case.case_id] = _patient_and_study_date(instance.path) if instance else ("", "")
            patient_id, study_date = identities[case.case_id]
            flagged.append({"case_id": case.case_id, "patient_id": patient_id, "study_date": study_date,
                            "sender": case.calling_ae, "roi": roi.name, "verdict": roi.verdict,
                            "dice": roi.predicted_dice, "low": roi.dice_low, "high": roi.dice_high,
                            "reason": reason_text(roi.reasons) or "-"})
    by_roi: dict[str, list[float]] = defaultdict(list)
    by_source: dict[str, list[float]] = defaultdict(list)
    for case, roi in rows:
        if roi.predicted_dice is not None:
            by_roi[roi.name].append(roi.predicted_dice)
            by_source[case.source_software].append(roi.predicted_dice)
    latencies = [(c.finished_at - c.ready_at).total_seconds() for c in finished
                 if c.state == CaseState.DONE.value and c.ready_at]
    return {
        "day": day.isoformat(), "received": received,
        "assessed": sum(c.state == CaseState.DONE.value for c in finished), "failed_count": len(failed),
        "verdicts": Counter(roi.verdict for _, roi in rows),
        "outside_domain": sum(roi.domain_inside is False for _, roi in rows),
        "unreadable": sum(roi.unreadable is not None for _, roi in rows),
        "flagged": flagged,
        "rois": [{"name": name, **_distribution(values, name), "trend": _trend(session, day, "roi", name)}
                 for name, values in sorted(by_roi.items())],
        "sources": [{"name": name or "unknown", **_distribution(values, name or "unknown source"),
                     "trend": _trend(session, day, "source", name)} for name, values in sorted(by_source.items())],
        "screens": Counter(s["name"] for _, roi in rows for s in roi.screens if not s.get("passed", True)),
        "latency": ({f"p{q}": float(np.percentile(latencies, q)) for q in (50, 90, 99)} | {"n": len(latencies)}
                    if latencies else None),
        "export_failures": ledger.export_failures(session),
        "dead_letters": len(ledger.dead_letters(session)),
        "failed": [{"case_id": c.case_id, "sender": c.calling_ae, "reason": c.reason} for c in failed],
        "calibration": _calibration(session, day, thresholds),
    }


def write_daily_summary(settings: Settings, sessions: sessionmaker, day: date, out: Path | None = None) -> Path:
    """The day's page (default: ``reports/daily/YYYY-MM-DD.html``) and the index of all days."""
    from .audits import latest_audit_results
    with sessions() as session:
        data = summary_data(session, day, (settings.assess.reject_below, settings.assess.review_below))
    path = render_page("daily.html.j2", out or summary_path(settings.reports_dir, day), **data,
                       audits=latest_audit_results(sessions))
    write_index(settings.reports_dir)
    return path


def write_index(reports_dir: Path) -> Path:
    """The list of every day's summary and every audit report, newest first."""
    days = sorted((p.stem for p in (reports_dir / "daily").glob("????-??-??.html")), reverse=True)
    audits = sorted(((p.parent.name, p.name) for p in (reports_dir / "audits").glob("*/*.html")),
                    key=lambda item: item[1], reverse=True)
    return render_page("index.html.j2", reports_dir / "daily" / "index.html", days=days, audits=audits)


def write_due_summaries(settings: Settings, sessions: sessionmaker, today: date | None = None) -> list[date]:
    """Each day since the first case up to yesterday whose summary no scheduler has written: claimed by
    inserting its job run (the unique key), written, then marked done. A day that failed is not retried
    here (`contourqa report daily --date` writes it by hand)."""
    today = today or utcnow().date()
    with sessions() as session:
        first = session.scalar(select(func.min(Case.created_at)))
        claimed = set(session.scalars(select(JobRun.key).where(JobRun.job == JOB)))
    if first is None:
        return []
    written = []
    day = first.date()
    while day < today:
        key = day.isoformat()
        if key not in claimed and claim(sessions, JOB, key):
            try:
                write_daily_summary(settings, sessions, day)
                finish_run(sessions, JOB, key, "done", None)
                written.append(day)
            except Exception as error:  # one bad day must not stop the others; recorded, not raised
                log.exception("daily summary of %s failed", day)
                finish_run(sessions, JOB, key, "failed", f"{type(error).__name__}: {error}")
        day += timedelta(days=1)
    return written
