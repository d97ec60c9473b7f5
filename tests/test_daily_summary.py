"""The daily QA summary: `contourqa report daily` on a real SQLite home, checked by an HTML5 parser and in
headless Chromium, and the scheduler's job that writes each missed day once."""

from __future__ import annotations

import subprocess
import threading
import time
from datetime import date, datetime, timedelta

import html5lib
import numpy as np
import pydicom
import pytest

from conftest import headless_chromium, run_cli
from contourqa.daemon.config import load_settings
from contourqa.daemon.daily_summary import summary_path, write_due_summaries
from contourqa.daemon.db import Case, Instance, JobRun, RoiResult, open_database

DAY = date(2026, 11, 20)


def _structure(sessions, path) -> int:
    instance = Instance(sop_instance_uid=pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID,
                        sop_class_uid="1.2.840.10008.5.1.4.1.1.481.3", study_uid="1", series_uid="3",
                        modality="RTSTRUCT", path=str(path), sha256="0" * 64, size=1)
    with sessions() as session:
        session.add(instance)
        session.commit()
        return instance.id


def _case(sessions, case_id: str, when: datetime, source: str, rois: list[tuple], structure_id: int,
          failure: str | None = None) -> None:
    """A finished case written straight into the tables, as the worker would have left it."""
    with sessions() as session:
        session.add(Case(case_id=case_id, structure_instance_id=structure_id, kind="RTSTRUCT", study_uid="1",
                         image_series_uid="2", calling_ae="TPS", source_software=source,
                         state="failed" if failure else "done", reason=failure, created_at=when,
                         ready_at=when, finished_at=when + timedelta(seconds=12)))
        for number, (name, verdict, dice, reasons) in enumerate(rois, start=1):
            session.add(RoiResult(case_id=case_id, roi_number=number, name=name, verdict=verdict,
                                  predicted_dice=dice, dice_low=None if dice is None else dice - 0.04,
                                  dice_high=None if dice is None else dice + 0.03, volume_ml=40.0, warnings=[],
                                  screens=[{"name": "slice_gaps", "passed": verdict != "review", "detail": "",
                                            "severity": "review"}],
                                  reasons=reasons))
        session.commit()


@pytest.fixture
def home(phantom, tmp_path):
    """95 days of results from two auto-contouring sources; on DAY one rejected ROI, one in review and one
    failed case."""
    settings = load_settings(None, {"home": str(tmp_path)})
    sessions = open_database(settings.resolved_database_url())
    structure = _structure(sessions, phantom / "case000" / "candidates" / "auto01.dcm")
    rng = np.random.default_rng(3)
    for back in range(95, 0, -1):
        day = DAY - timedelta(days=back)
        for n, source in enumerate(("Vendor A 1.0", "Vendor B 2.3")):
            rois = [("Prostate", "accept", float(rng.normal(0.88, 0.02)), []),
                    ("Rectum", "accept", float(rng.normal(0.85, 0.02)), [])]
            _case(sessions, f"{day}-{n}", datetime.combine(day, datetime.min.time()) + timedelta(hours=9 + n), source,
                  rois, structure)
    noon = datetime.combine(DAY, datetime.min.time()) + timedelta(hours=12)
    _case(sessions, "today-1", noon, "Vendor A 1.0", [
        ("Prostate", "reject", 0.61, [{"rule": "dice_reject", "detail": "predicted Dice 0.610 < 0.75"}]),
        ("Rectum", "review", 0.86, [{"rule": "slice_gaps", "detail": "2 gaps between contoured slices"}])], structure)
    _case(sessions, "today-2", noon + timedelta(hours=1), "Vendor B 2.3", [
        ("Prostate", "accept", 0.90, []), ("Rectum", "accept", 0.84, [])], structure)
    _case(sessions, "today-3", noon + timedelta(hours=2), "Vendor B 2.3", [], structure,
          failure="series 2: slice spacing varies")
    return settings, sessions


def test_report_daily_writes_a_valid_self_contained_page(home, phantom):
    settings, _ = home
    result = run_cli("report", "daily", "--date", DAY.isoformat(), "--home", settings.home)
    assert result.returncode == 0, result.stderr
    page = summary_path(settings.reports_dir, DAY)
    assert result.stdout.strip() == str(page)
    html = page.read_text()
    html5lib.HTMLParser(strict=True).parse(html)  # raises on any parse error
    patient_id = pydicom.dcmread(phantom / "case000" / "candidates" / "auto01.dcm").PatientID
    flagged = html[html.index("Flagged ROIs"):html.index("By ROI")]
    assert "Flagged ROIs (2)" in flagged and patient_id in flagged and "TPS" in flagged
    assert "0.610 (0.57–0.64)" in flagged and "predicted Dice 0.610 &lt; 0.75" in flagged
    assert "2 gaps between contoured slices" in flagged
    assert flagged.count('href="../case/today-1"') == 2  # the case's page, where the node serves the summary
    assert "series 2: slice spacing varies" in html  # the failed case
    assert html.count("<svg") == 8  # a histogram and a 90-day control chart per ROI and per source
    assert html.count('role="img" aria-label="') == 8 and "daily mean predicted Dice of Prostate" in html
    assert "Vendor A 1.0" in html and "Vendor B 2.3" in html
    assert "http" not in html.replace("http-equiv", "")  # nothing fetched from anywhere: readable offline
    index = (settings.reports_dir / "daily" / "index.html").read_text()
    html5lib.HTMLParser(strict=True).parse(index)
    assert f'href="{DAY.isoformat()}.html"' in index


def test_the_control_chart_marks_the_day_a_source_dropped(home):
    """Prostate's mean fell to 0.755 today against 0.88 +- 0.02 for 95 days: the day is outside the limits."""
    settings, _ = home
    assert run_cli("report", "daily", "--date", DAY.isoformat(), "--home", settings.home).returncode == 0
    html = summary_path(settings.reports_dir, DAY).read_text()
    chart = html[html.index("daily mean predicted Dice of Prostate"):]
    chart = chart[:chart.index("</svg>")]
    assert "1 day(s) outside" in chart and chart.count('fill="#b00020"') == 1


def test_the_page_renders_in_headless_chromium_without_console_errors(home, tmp_path):
    settings, _ = home
    assert run_cli("report", "daily", "--date", DAY.isoformat(), "--home", settings.home).returncode == 0
    page = summary_path(settings.reports_dir, DAY)
    command = headless_chromium(tmp_path / "profile")
    dumped = subprocess.run([*command, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120)
    assert "Contour QA summary, 2026-11-20" in dumped.stdout and dumped.stdout.count("<circle") > 100
    assert "CONSOLE" not in dumped.stderr and "Uncaught" not in dumped.stderr
    subprocess.run([*command, f"--screenshot={tmp_path / 'page.png'}", "--window-size=1200,1600", page.as_uri()],
                   capture_output=True, timeout=120)
    assert (tmp_path / "page.png").stat().st_size > 20_000  # not blank
    index = subprocess.run([*command, "--dump-dom", (page.parent / "index.html").as_uri()], capture_output=True,
                           text=True, timeout=120)
    assert f'href="{DAY.isoformat()}.html"' in index.stdout


@pytest.mark.parametrize("arguments, message", [
    (["--date", "20-11-2026"], "--date '20-11-2026': expected YYYY-MM-DD"),
])
def test_report_daily_bad_date_is_one_line(tmp_path, arguments, message):
    open_database(f"sqlite:///{tmp_path / 'contourqa.sqlite'}")
    result = run_cli("report", "daily", *arguments, "--home", tmp_path)
    assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr


def _small_home(phantom, tmp_path, days: int = 4, database_url: str | None = None):
    settings = load_settings(None, {"home": str(tmp_path), "database_url": database_url})
    sessions = open_database(settings.resolved_database_url())
    structure = _structure(sessions, phantom / "case000" / "candidates" / "auto01.dcm")
    for back in range(days, 0, -1):
        when = datetime.combine(DAY - timedelta(days=back), datetime.min.time()) + timedelta(hours=10)
        _case(sessions, f"c{back}", when, "Vendor A 1.0", [("Prostate", "accept", 0.9, [])], structure)
    return settings, sessions


def test_each_missed_day_is_written_once_and_a_restart_repeats_none(phantom, tmp_path):
    settings, sessions = _small_home(phantom, tmp_path)
    written = write_due_summaries(settings, sessions, today=DAY)
    assert written == [DAY - timedelta(days=n) for n in (4, 3, 2, 1)]  # up to yesterday, not today
    assert all(summary_path(settings.reports_dir, d).is_file() for d in written)
    assert write_due_summaries(settings, sessions, today=DAY) == []  # a restart: nothing again
    assert write_due_summaries(settings, sessions, today=DAY + timedelta(days=2)) == [DAY, DAY + timedelta(days=1)]
    with sessions() as session:
        runs = session.query(JobRun).all()
        assert len(runs) == 6 and {r.status for r in runs} == {"done"} and all(r.finished_at for r in runs)


def test_two_schedulers_started_by_mistake_write_each_day_once(phantom, tmp_path, database_url):
    settings, _ = _small_home(phantom, tmp_path, days=6, database_url=database_url)
    results: list[list[date]] = []

    def scheduler() -> None:  # each with its own engine, as two processes would have
        results.append(write_due_summaries(settings, open_database(settings.resolved_database_url()), today=DAY))

    threads = [threading.Thread(target=scheduler) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(results[0] + results[1]) == [DAY - timedelta(days=n) for n in range(6, 0, -1)]


def test_the_scheduler_registers_the_morning_job_at_the_configured_time(tmp_path):
    from contourqa.daemon.jobs import JOBSTORE
    from contourqa.daemon.scheduler import start_scheduler

    settings = load_settings(None, {"home": str(tmp_path), "scheduler.daily_summary_at": "05:30"})
    scheduler = start_scheduler(settings, open_database(settings.resolved_database_url()))
    try:
        deadline = time.monotonic() + 10
        while (job := scheduler.get_job("daily-summaries", jobstore=JOBSTORE)) is None and time.monotonic() < deadline:
            time.sleep(0.1)  # the declared jobs are synchronised into the job store by the scheduler's thread
        fields = {f.name: str(f) for f in job.trigger.fields}
        assert (fields["hour"], fields["minute"], str(job.trigger.timezone)) == ("5", "30", "UTC")
    finally:
        scheduler.shutdown(wait=False)
    bad = run_cli("status", "--home", tmp_path, "--config", _config(tmp_path, "daily_summary_at: '25:00'"))
    assert bad.returncode == 2 and "daily_summary_at" in bad.stderr and "Traceback" not in bad.stderr


def _config(folder, line: str):
    path = folder / "bad.yaml"
    path.write_text(f"scheduler:\n  {line}\n")
    return path
