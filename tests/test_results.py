"""`contourqa results`, `show` and `retry` on a node's real SQLite database, and a failed case re-opened
by the late arrival of an image it references."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from pathlib import Path

import pydicom
import pytest
from sqlalchemy import select

from conftest import run_cli
from contourqa.daemon import ledger
from contourqa.daemon.assembler import Assembler
from contourqa.daemon.cli_node import parse_since
from contourqa.daemon.db import Case, Instance, OutboxItem, RoiResult, open_database, utcnow
from contourqa.qa_models.errors import InputError


def _instance(sessions, uid: str, series: str = "2.1") -> Instance:
    instance = Instance(sop_instance_uid=uid, sop_class_uid="1.2.840.10008.5.1.4.1.1.4", study_uid="1",
                        series_uid=series, modality="MR", path=f"/store/{uid}.dcm", sha256="0" * 64, size=1)
    with sessions() as session:
        session.add(instance)
        session.commit()
        session.refresh(instance)
        session.expunge(instance)
    return instance


def _open(sessions, case_id: str, references=("1.10",), sender="TPS") -> None:
    case = Case(case_id=case_id, structure_instance_id=1, kind="RTSTRUCT", study_uid="1", image_series_uid="2.1",
                calling_ae=sender, source_software="AutoSeg 3.1")
    assert ledger.open_case(sessions, case, references)


def _finish(sessions, case_id: str, rois: list[dict], finished_at: datetime) -> None:
    _open(sessions, case_id)
    for target in (ledger.CaseState.READY, ledger.CaseState.QUEUED):
        with sessions() as session:
            ledger._move(session, case_id, target)
            session.commit()
    assert ledger.start(sessions, case_id)
    results = [RoiResult(case_id=case_id, roi_number=n, volume_ml=40.0, screens=[], warnings=[], **roi)
               for n, roi in enumerate(rois, start=1)]
    outbox = OutboxItem(case_id=case_id, sr_path="sr.dcm", sr_sop_instance_uid=f"9.{case_id}", destination="QA@h:1")
    assert ledger.finish(sessions, case_id, results, outbox, sr_path="sr.dcm", model_name="m", model_version="3",
                         model_sha256="ab" * 32)
    with sessions() as session:
        session.get(Case, case_id).finished_at = finished_at
        session.commit()


@pytest.fixture
def home(tmp_path):
    """A node home with one accepted, one rejected, one outside-domain and one failed case."""
    sessions = open_database(f"sqlite:///{tmp_path / 'contourqa.sqlite'}")
    now = utcnow()
    _finish(sessions, "1.2.100", [
        {"name": "Prostate", "verdict": "accept", "predicted_dice": 0.91, "dice_low": 0.88, "dice_high": 0.93,
         "reasons": []},
        {"name": "Rectum", "verdict": "reject", "predicted_dice": 0.62, "dice_low": 0.55, "dice_high": 0.70,
         "reasons": [{"rule": "dice_reject", "detail": "predicted Dice 0.620 < 0.75"}]},
    ], now - timedelta(hours=2))
    _finish(sessions, "1.2.200", [
        {"name": "Prostate", "verdict": "review", "predicted_dice": None, "domain_score": 80.0, "domain_inside": False,
         "reasons": [{"rule": "outside_domain", "detail": "image outside the model's training domain (score 80.0 > 31.7)"}]},
    ], now - timedelta(days=3))
    _open(sessions, "1.2.300", references=("1.30",))
    assert ledger.fail(sessions, "1.2.300", "series 2.1: slice spacing varies")
    return tmp_path, sessions


def test_results_lists_rois_with_their_verdict_dice_and_reason(home):
    folder, _ = home
    result = run_cli("results", "--home", folder)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split()[:3] == ["finished", "(UTC)", "case"]
    rectum = next(line for line in lines if "Rectum" in line)
    assert "reject" in rectum and "0.620 (0.55-0.70)" in rectum and "predicted Dice 0.620 < 0.75" in rectum
    assert any("failed" in line and "not assessed: series 2.1: slice spacing varies" in line for line in lines)
    assert len(lines) == 1 + 4  # header, two ROIs, one ROI, one failed case


def test_results_filter_by_verdict_roi_and_time_as_json(home):
    folder, _ = home
    rows = json.loads(run_cli("results", "--home", folder, "--json").stdout)
    assert [r["case_id"] for r in rows][:2] == ["1.2.300", "1.2.100"]  # newest first
    assert all(r["model_sha256"] == "ab" * 32 for r in rows if r["state"] == "done")
    rejected = json.loads(run_cli("results", "--home", folder, "--verdict", "reject", "--json").stdout)
    assert [(r["roi"], r["predicted_dice"], r["interval"]) for r in rejected] == [("Rectum", 0.62, [0.55, 0.70])]
    failed = json.loads(run_cli("results", "--home", folder, "--verdict", "failed", "--json").stdout)
    assert [r["case_id"] for r in failed] == ["1.2.300"] and failed[0]["roi"] is None
    prostate = json.loads(run_cli("results", "--home", folder, "--roi", "prostate", "--json").stdout)
    assert sorted(r["verdict"] for r in prostate) == ["accept", "review"]
    outside = next(r for r in prostate if r["verdict"] == "review")
    assert outside["predicted_dice"] is None and "outside the model's training domain" in outside["reason"]
    recent = json.loads(run_cli("results", "--home", folder, "--since", "1d", "--json").stdout)
    assert {r["case_id"] for r in recent} == {"1.2.100", "1.2.300"}


def test_show_prints_one_case_in_full(home):
    folder, _ = home
    result = run_cli("show", "1.2.100", "--home", folder)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("case 1.2.100 (RTSTRUCT): done")
    assert "sender TPS, source AutoSeg 3.1" in result.stdout and "model m 3 sha256:abababab" in result.stdout
    assert "ROI 2 Rectum: reject, predicted Dice 0.620 (0.55-0.70), 40.0 ml - predicted Dice 0.620 < 0.75" in result.stdout
    assert "export to QA@h:1: pending" in result.stdout
    detail = json.loads(run_cli("show", "1.2.300", "--home", folder, "--json").stdout)
    assert detail["state"] == "failed" and detail["reason"] == "series 2.1: slice spacing varies"
    assert detail["references"] == {"listed": 1, "stored": 0}


@pytest.mark.parametrize("arguments, message", [
    (["show", "9.9.9"], "no case 9.9.9"),
    (["retry", "9.9.9"], "no case 9.9.9"),
    (["retry", "1.2.100"], "case 1.2.100 is done; only a failed case can be retried"),
    (["results", "--since", "last week"], "--since 'last week': expected YYYY-MM-DD or an age"),
    (["results", "--limit", "0"], "--limit must be at least 1"),
])
def test_bad_requests_get_one_line_and_exit_2(home, arguments, message):
    folder, _ = home
    result = run_cli(*arguments, "--home", folder)
    assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr


def test_retry_reopens_a_failed_case_and_readies_it_once_its_images_are_stored(home):
    folder, sessions = home
    result = run_cli("retry", "1.2.300", "--home", folder)
    assert result.returncode == 0 and "waiting for its images" in result.stdout
    assert ledger.case_state(sessions, "1.2.300") == "waiting"
    assert ledger.fail(sessions, "1.2.300", "again")
    _instance(sessions, "1.30")
    result = run_cli("retry", "1.2.300", "--home", folder)
    assert result.returncode == 0 and "its images are complete" in result.stdout
    assert ledger.case_state(sessions, "1.2.300") == "ready"  # the node's sweep dispatches ready cases


def test_a_late_referenced_instance_reopens_a_failed_case_and_dispatches_it(tmp_path):
    sessions = open_database(f"sqlite:///{tmp_path / 'db.sqlite'}")
    _open(sessions, "c1", references=("1.10", "1.11"))
    assert ledger.fail(sessions, "c1", "referenced images never arrived")
    dispatched = []
    assembler = Assembler(sessions, dispatched.append)
    assembler.on_stored(_instance(sessions, "1.99"), None)  # not one of its references: stays failed
    assert ledger.case_state(sessions, "c1") == "failed"
    assembler.on_stored(_instance(sessions, "1.10"), None)
    assert ledger.case_state(sessions, "c1") == "waiting" and dispatched == []  # 1.11 still missing
    assembler.on_stored(_instance(sessions, "1.11"), None)
    assert ledger.case_state(sessions, "c1") == "ready" and dispatched == ["c1"]


def test_since_reads_dates_and_ages():
    now = datetime(2026, 11, 30, 12, 0)
    assert parse_since("2026-11-01", now) == datetime(2026, 11, 1)
    assert parse_since("24h", now) == datetime(2026, 11, 29, 12, 0)
    assert parse_since("7d", now) == datetime(2026, 11, 23, 12, 0)
    assert parse_since("90m", now) == datetime(2026, 11, 30, 10, 30)
    with pytest.raises(InputError):
        parse_since("yesterday", now)


def test_a_failed_case_is_answered_once_with_a_not_assessed_sr_and_again_after_a_new_failure(phantom, tmp_path):
    from contourqa.daemon.case_runner import answer_failed_cases
    from contourqa.daemon.config import load_settings

    settings = load_settings(None, {"home": str(tmp_path), "export.default_destination": "QA@127.0.0.1:11113"})
    sessions = open_database(settings.resolved_database_url())
    structure = _instance(sessions, "9.1")
    with sessions() as session:
        session.get(Instance, structure.id).path = str(phantom / "case000" / "candidates" / "auto01.dcm")
        session.commit()
    case = Case(case_id="c1", structure_instance_id=structure.id, kind="RTSTRUCT", study_uid="1",
                image_series_uid="2.1", calling_ae="TPS")
    assert ledger.open_case(sessions, case, ["1.10"])
    assert ledger.fail(sessions, "c1", "series 2.1: slice spacing varies")
    assert answer_failed_cases(settings, sessions) == ["c1"]
    assert answer_failed_cases(settings, sessions) == []  # answered once
    with sessions() as session:
        first = session.scalars(select(OutboxItem)).one()
        assert Path(first.sr_path).is_file() and first.destination == "QA@127.0.0.1:11113"
        first_uid = first.sr_sop_instance_uid
        ledger_case = session.get(Case, "c1")
        assert ledger_case.sr_path == first.sr_path
        first.state = "sent"
        session.commit()
    sr = pydicom.dcmread(first.sr_path)
    assert sr.SOPInstanceUID == first_uid and sr.PatientID == pydicom.dcmread(
        phantom / "case000" / "candidates" / "auto01.dcm").PatientID
    # re-opened, started and failed again: a new answer replaces the sent one in the case's outbox row
    assert ledger.reopen(sessions, "c1")
    with sessions() as session:
        session.get(Case, "c1").attempts = 1
        session.commit()
    assert ledger.fail(sessions, "c1", "assessment did not finish in 3 attempts")
    assert answer_failed_cases(settings, sessions) == ["c1"]
    with sessions() as session:
        row = session.scalars(select(OutboxItem)).one()
        assert row.state == "pending" and row.sr_sop_instance_uid != first_uid and row.attempts == 0


def test_no_answer_for_failed_cases_when_the_site_turns_it_off(tmp_path):
    from contourqa.daemon.case_runner import answer_failed_cases
    from contourqa.daemon.config import load_settings

    settings = load_settings(None, {"home": str(tmp_path), "export.answer_failed": False})
    sessions = open_database(settings.resolved_database_url())
    _open(sessions, "c1")
    assert ledger.fail(sessions, "c1", "why")
    assert answer_failed_cases(settings, sessions) == [] and ledger.unanswered_failures(sessions)
