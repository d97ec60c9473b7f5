"""Past results as a person asks for them: `contourqa results` (cases and ROIs, filtered) and
`contourqa show CASE` (one case in full), as text or JSON."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from .db import Case, CaseReference, CaseState, Instance, OutboxItem, RoiResult

DONE, FAILED = CaseState.DONE.value, CaseState.FAILED.value


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat(timespec="seconds") + "Z" if moment else None


def reason_text(reasons: list[dict] | None) -> str:
    """The ROI's reasons, one clause each; rows stored before reasons were recorded have none."""
    return "; ".join(r["detail"] for r in reasons or [])


def _roi_row(case: Case, roi: RoiResult | None) -> dict[str, Any]:
    row = {"case_id": case.case_id, "state": case.state, "finished": _iso(case.finished_at),
           "sender": case.calling_ae, "source": case.source_software, "kind": case.kind,
           "model_sha256": case.model_sha256}
    if roi is None and case.approval:  # an approved structure set: compared, not assessed
        return {**row, "roi": None, "verdict": "approved", "predicted_dice": None, "interval": None,
                "reason": case.reason}
    if roi is None:  # a failed case: no ROI was assessed, and the case says why
        return {**row, "roi": None, "verdict": None, "predicted_dice": None, "interval": None,
                "reason": f"not assessed: {case.reason}"}
    interval = [roi.dice_low, roi.dice_high] if roi.dice_low is not None else None
    reason = reason_text(roi.reasons)
    if roi.domain_inside is False and "domain" not in reason:
        reason = "; ".join(filter(None, [reason, "outside the model's domain"]))
    return {**row, "roi": roi.name, "verdict": roi.verdict, "predicted_dice": roi.predicted_dice,
            "interval": interval, "reason": reason, "real_dice": roi.real_dice, "hd95_mm": roi.hd95_mm,
            "approved_case_id": roi.approved_case_id}


def list_results(session: Session, since: datetime | None = None, verdict: str | None = None,
                 roi: str | None = None, limit: int = 500) -> list[dict[str, Any]]:
    """Finished cases, newest first, one row per ROI (one row for a failed case), filtered by finish time,
    verdict (``failed`` selects the failed cases) and ROI name (case-insensitive)."""
    query = select(Case).where(Case.state.in_([DONE, FAILED])).order_by(Case.finished_at.desc(), Case.case_id)
    if since is not None:
        query = query.where(Case.finished_at >= since)
    rows: list[dict[str, Any]] = []
    for case in session.scalars(query):
        rois = session.scalars(select(RoiResult).where(RoiResult.case_id == case.case_id)
                               .order_by(RoiResult.roi_number)).all()
        for item in rois or [None]:
            row = _roi_row(case, item)
            if verdict is not None and (row["verdict"] or FAILED) != verdict:
                continue
            if roi is not None and (row["roi"] or "").lower() != roi.lower():
                continue
            rows.append(row)
        if len(rows) >= limit:
            break
    return rows[:limit]


def format_results(rows: list[dict[str, Any]]) -> str:
    """A table a physicist reads on a terminal: one line per ROI."""
    header = f"{'finished (UTC)':<21} {'case':<28} {'sender':<16} {'ROI':<18} {'verdict':<8} {'Dice (5-95 %)':>20}  reason"
    lines = [header]
    for r in rows:
        dice = "-" if r["predicted_dice"] is None else (
            f"{r['predicted_dice']:.3f}" + (f" ({r['interval'][0]:.2f}-{r['interval'][1]:.2f})" if r["interval"] else ""))
        lines.append(f"{(r['finished'] or '-'):<21} {r['case_id'][-28:]:<28} {r['sender'][:16]:<16} "
                     f"{(r['roi'] or '-')[:18]:<18} {(r['verdict'] or 'failed'):<8} {dice:>20}  {r['reason'] or '-'}")
    if not rows:
        lines.append("(no finished cases match)")
    return "\n".join(lines)


def case_detail(session: Session, case_id: str) -> dict[str, Any] | None:
    """Everything recorded about one case; None when there is no such case."""
    case = session.get(Case, case_id)
    if case is None:
        return None
    references = session.scalars(select(CaseReference.sop_instance_uid).where(
        CaseReference.case_id == case_id, CaseReference.sop_instance_uid.is_not(None))).all()
    stored = set(session.scalars(select(Instance.sop_instance_uid).where(Instance.sop_instance_uid.in_(references))))
    rois = session.scalars(select(RoiResult).where(RoiResult.case_id == case_id).order_by(RoiResult.roi_number)).all()
    exports = session.scalars(select(OutboxItem).where(OutboxItem.case_id == case_id).order_by(OutboxItem.id)).all()
    return {
        "case_id": case.case_id, "state": case.state, "kind": case.kind, "reason": case.reason,
        "partial": case.partial, "attempts": case.attempts, "sender": case.calling_ae, "source": case.source_software,
        "study_uid": case.study_uid, "image_series_uid": case.image_series_uid,
        "references": {"listed": len(references), "stored": len(stored)},
        "times": {"opened": _iso(case.created_at), "ready": _iso(case.ready_at), "started": _iso(case.started_at),
                  "finished": _iso(case.finished_at)},
        "model": {"name": case.model_name, "version": case.model_version, "sha256": case.model_sha256},
        "approval": case.approval, "approves_case_id": case.approves_case_id,
        "sr_path": case.sr_path, "timings": case.timings, "image_profile": case.image_profile,
        "rois": [{**_roi_row(case, roi), "number": roi.roi_number, "volume_ml": roi.volume_ml,
                  "screens": roi.screens, "warnings": roi.warnings,
                  "domain": None if roi.domain_inside is None else {"score": roi.domain_score,
                                                                    "inside": roi.domain_inside,
                                                                    "detail": roi.domain_detail}}
                 for roi in rois],
        "exports": [{"destination": e.destination, "state": e.state, "attempts": e.attempts,
                     "last_error": e.last_error} for e in exports],
    }


def format_case(detail: dict[str, Any]) -> str:
    lines = [f"case {detail['case_id']} ({detail['kind']}): {detail['state']}"
             + (f" - {detail['reason']}" if detail["reason"] else "")
             + (" (assessed on the images present)" if detail["partial"] else "")]
    lines.append(f"  sender {detail['sender'] or '-'}, source {detail['source'] or '-'}, attempts {detail['attempts']}")
    lines.append(f"  study {detail['study_uid']}, image series {detail['image_series_uid'] or '-'}, "
                 f"referenced instances {detail['references']['stored']}/{detail['references']['listed']} stored")
    times = ", ".join(f"{k} {v}" for k, v in detail["times"].items() if v)
    lines.append(f"  {times}")
    model = detail["model"]
    if model["name"]:
        lines.append(f"  model {model['name']} {model['version']} sha256:{(model['sha256'] or '')[:16]}")
    for roi in detail["rois"]:
        dice = "-" if roi["predicted_dice"] is None else f"{roi['predicted_dice']:.3f}"
        if roi["interval"]:
            dice += f" ({roi['interval'][0]:.2f}-{roi['interval'][1]:.2f})"
        lines.append(f"  ROI {roi['number']} {roi['roi']}: {roi['verdict']}, predicted Dice {dice}, "
                     f"{roi['volume_ml']:.1f} ml" + (f" - {roi['reason']}" if roi["reason"] else ""))
        if roi["real_dice"] is not None:
            hd95 = f", HD95 {roi['hd95_mm']:.1f} mm" if roi["hd95_mm"] is not None else ""
            lines.append(f"    real Dice {roi['real_dice']:.3f}{hd95} against the approved version "
                         f"(case {roi['approved_case_id']})")
        failed = [s["name"] for s in roi["screens"] if not s.get("passed", True)]
        if failed:
            lines.append(f"    failed screens: {', '.join(failed)}")
        for warning in roi["warnings"]:
            lines.append(f"    warning: {warning}")
    if detail["sr_path"]:
        lines.append(f"  SR {detail['sr_path']}")
    for export in detail["exports"]:
        lines.append(f"  export to {export['destination']}: {export['state']} after {export['attempts']} attempt(s)"
                     + (f" - {export['last_error']}" if export["last_error"] else ""))
    return "\n".join(lines)
