"""Drift audits: 120 simulated days through the ledger (a real SQLite home), the commands an admin uses, the
report in an HTML5 parser and headless Chromium, and the notices over a real SMTP server and webhook."""

from __future__ import annotations

import json
import subprocess
import threading
from datetime import datetime, timedelta
from http.server import BaseHTTPRequestHandler, HTTPServer

import html5lib
import numpy as np
import pytest

from conftest import headless_chromium, run_cli
from node_harness import free_port
from contourqa.daemon.audits import add_audit, run_audit
from contourqa.daemon.config import load_settings
from contourqa.daemon.daily_summary import summary_path, write_daily_summary
from contourqa.daemon.db import AuditRun, Case, Instance, RoiResult, open_database, utcnow
from contourqa.reporting.drift import compare_rate, psi
from contourqa.reporting.drift_simulation import simulate

CHANGE = 90


def _feed(sessions, start: datetime, seed: int = 0) -> None:
    """The simulated site's results written as the worker leaves them: a case row per structure set, a row
    per ROI, the image profile on the case."""
    rows = simulate(seed, start, days=120, change_day=CHANGE)
    rng = np.random.default_rng(seed)
    with sessions() as session:
        structure = Instance(sop_instance_uid="1.2.3", sop_class_uid="1.2.840.10008.5.1.4.1.1.481.3", study_uid="1",
                             series_uid="3", modality="RTSTRUCT", path="/nonexistent", sha256="0" * 64, size=1)
        session.add(structure)
        session.flush()
        cases: dict[str, list] = {}
        for r in rows:
            cases.setdefault(r.case_id, []).append(r)
        for case_id, rois in cases.items():
            first = rois[0]
            session.add(Case(case_id=case_id, structure_instance_id=structure.id, kind="RTSTRUCT", study_uid="1",
                             image_series_uid="2", calling_ae="TPS", source_software=first.source, state="done",
                             created_at=first.finished_at, finished_at=first.finished_at, image_profile=first.profile))
            for number, r in enumerate(rois, start=1):
                approved = rng.random() < 0.3  # the approved version came back for some
                session.add(RoiResult(case_id=case_id, roi_number=number, name=r.roi, verdict=r.verdict,
                                      predicted_dice=r.dice, volume_ml=r.volume_ml, screens=[], warnings=[],
                                      domain_inside=r.inside, domain_score=1.0,
                                      real_dice=float(np.clip(r.dice + rng.normal(0, 0.03), 0, 1)) if approved else None))
        session.commit()


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """A home whose 120 simulated days end today: the change happened 30 days ago."""
    home = tmp_path_factory.mktemp("site")
    settings = load_settings(None, {"home": str(home)})
    sessions = open_database(settings.resolved_database_url())
    today = utcnow().replace(hour=0, minute=0, second=0, microsecond=0)
    _feed(sessions, today - timedelta(days=120))
    return settings, sessions, today - timedelta(days=120)


def test_the_audit_flags_both_changes_within_a_week_and_nothing_before(site):
    settings, sessions, start = site
    add_audit(sessions, "weekly-all", "0 0 * * *", "7d", "90d")
    flagged: dict[str, int] = {}
    for day in range(30, CHANGE + 8):
        run = run_audit(settings, sessions, "weekly-all", now=start + timedelta(days=day))
        findings = json.loads(open(run.json_path).read())["findings"]
        sources = {f["group"].split(" / ")[-1] for f in findings if f["drift"]}
        if day <= CHANGE:
            assert not run.drift, f"false alarm on day {day}: {run.summary}"
            continue
        assert "AutoSeg C" not in sources, f"the unchanged source flagged on day {day}: {run.summary}"
        for source in sources:
            flagged.setdefault(source, day)
        metrics = {f["metric"] for f in findings if f["drift"]}
        if "AutoSeg B" in sources:
            assert any(m.startswith("input:") for m in metrics)  # B's scanner, not its Dice, changed
    assert flagged.get("AutoSeg A", 999) <= CHANGE + 7 and flagged.get("AutoSeg B", 999) <= CHANGE + 7, flagged
    with sessions() as session:
        assert session.query(AuditRun).filter_by(audit="weekly-all").count() == CHANGE + 8 - 30


def test_the_false_alarm_rate_over_many_seeds_stays_below_the_level():
    """The per-run false-alarm rate on stable data, over 5 seeds of 40 daily runs (bench/bench_drift.py
    runs 50 seeds): at most the audit's family-wise level of 0.001 allows, with room for chance (2 of 200)."""
    from contourqa.daemon.audits import METRICS, Observation, audit_findings
    from contourqa.daemon.db import Audit

    audit = Audit(name="s", cron="0 0 * * *", window_days=7, reference_days=90, metrics=list(METRICS), alpha=0.001)
    start, alarms, runs = datetime(2026, 1, 1), 0, 0
    for seed in range(100, 105):
        items = [Observation(r.finished_at, r.roi, r.source, r.verdict, r.dice, r.inside, r.volume_ml, r.case_id,
                             r.profile) for r in simulate(seed, start, days=CHANGE, change_day=CHANGE)]
        for day in range(50, CHANGE, 1):
            now = start + timedelta(days=day)
            old = [o for o in items if now - timedelta(days=97) <= o.finished_at < now - timedelta(days=7)]
            new = [o for o in items if now - timedelta(days=7) <= o.finished_at < now]
            alarms += audit_findings(audit, old, new)[2]
            runs += 1
    assert alarms <= 2, f"{alarms} false alarms in {runs} runs"


def test_psi_and_rates_read_small_windows_without_false_drift():
    rng = np.random.default_rng(0)
    reference = rng.normal(0.88, 0.04, 500)
    assert psi(reference, rng.normal(0.88, 0.04, 40))[1] > 0.01  # the same distribution, a small window
    assert psi(reference, rng.normal(0.83, 0.04, 40))[1] < 1e-4  # a 0.05 drop
    # 1 of 271 before and 4 of 56 now, at a true rate of 2 %: not drift once the reference's own error counts
    assert compare_rate("g", "m", 1, 271, 4, 56)[0].p_value > 0.001
    assert compare_rate("g", "m", 5, 271, 20, 56)[0].p_value < 1e-6


def test_admin_commands_add_list_run_remove(site):
    settings, _, _ = site
    home = settings.home
    added = run_cli("audit", "add", "all-sources", "--cron", "0 7 * * 1", "--home", home)
    assert added.returncode == 0 and "all-sources added" in added.stdout
    stable = run_cli("audit", "add", "source-c", "--cron", "0 7 * * *", "--source", "AutoSeg C", "--roi", "prostate",
                     "--metric", "dice", "--metric", "flags", "--home", home)
    assert stable.returncode == 0, stable.stderr
    drift = run_cli("audit", "run", "all-sources", "--home", home)  # today: the window is after both changes
    assert drift.returncode == 1 and drift.stdout.startswith("DRIFT") and "AutoSeg A" in drift.stdout
    calm = run_cli("audit", "run", "source-c", "--home", home)
    assert calm.returncode == 0 and calm.stdout.startswith("no drift"), calm.stdout
    listed = run_cli("audit", "list", "--json", "--home", home)
    rows = {r["name"]: r for r in json.loads(listed.stdout)}
    assert rows["all-sources"]["drift"] is True and rows["source-c"]["drift"] is False
    report = settings.reports_dir / "audits" / "all-sources" / rows["all-sources"]["report"]
    html = report.read_text()
    html5lib.HTMLParser(strict=True).parse(html)
    assert "<svg" in html and "Kolmogorov-Smirnov" in html
    data = json.loads(report.with_suffix(".json").read_text())
    assert data["drift"] is True
    calibration = data["calibration"]["recent"]  # predicted against the real Dice of approved contours
    assert calibration["n"] > 20 and 0.01 < calibration["mae"] < 0.05
    assert html.count("real Dice") >= 2
    # the daily summary shows each audit's latest status and links its report
    day = utcnow().date()
    write_daily_summary(settings, open_database(settings.resolved_database_url()), day)
    summary = summary_path(settings.reports_dir, day).read_text()
    assert f'href="../audits/all-sources/{rows["all-sources"]["report"]}"' in summary and "source-c" in summary
    assert "ROIs whose approved version came back: MAE 0.0" in summary
    index = (settings.reports_dir / "daily" / "index.html").read_text()
    assert "all-sources" in index
    assert run_cli("audit", "remove", "source-c", "--home", home).returncode == 0
    assert "source-c" not in run_cli("audit", "list", "--home", home).stdout


@pytest.mark.parametrize("arguments, message", [
    (["add", "x", "--cron", "61 * * * *"], "--cron '61 * * * *'"),
    (["add", "x", "--cron", "0 7 * * *", "--window", "a week"], "--window 'a week': expected a duration"),
    (["add", "x", "--cron", "0 7 * * *", "--metric", "colour"], "--metric colour"),
    (["add", "x", "--cron", "0 7 * * *", "--threshold", "5"], "--threshold"),
    (["add", "bad name!", "--cron", "0 7 * * *"], "audit name 'bad name!'"),
    (["run", "nobody"], "no audit named nobody"),
    (["remove", "nobody"], "no audit named nobody"),
])
def test_bad_audit_commands_are_one_line_with_exit_2(tmp_path, arguments, message):
    open_database(f"sqlite:///{tmp_path / 'contourqa.sqlite'}")
    result = run_cli("audit", *arguments, "--home", tmp_path)
    assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_a_duplicate_audit_name_is_refused(tmp_path):
    open_database(f"sqlite:///{tmp_path / 'contourqa.sqlite'}")
    assert run_cli("audit", "add", "one", "--cron", "0 7 * * *", "--home", tmp_path).returncode == 0
    again = run_cli("audit", "add", "one", "--cron", "0 8 * * *", "--home", tmp_path)
    assert again.returncode == 2 and "exists" in again.stderr


def test_the_report_renders_in_headless_chromium_without_console_errors(site, tmp_path):
    settings, sessions, start = site
    add_audit(sessions, "chromium", "0 0 * * *", "7d", "90d")
    run = run_audit(settings, sessions, "chromium", now=start + timedelta(days=CHANGE + 7))
    command = headless_chromium(tmp_path / "profile")
    page = f"file://{run.report_path}"
    dumped = subprocess.run([*command, "--dump-dom", page], capture_output=True, text=True, timeout=120)
    assert "Drift audit chromium" in dumped.stdout and dumped.stdout.count("<circle") > 100  # the charts' days
    assert "CONSOLE" not in dumped.stderr and "Uncaught" not in dumped.stderr
    subprocess.run([*command, f"--screenshot={tmp_path / 'audit.png'}", "--window-size=1200,1600", page],
                   capture_output=True, timeout=120)
    assert (tmp_path / "audit.png").stat().st_size > 20_000  # not blank


class _Hook(BaseHTTPRequestHandler):
    received: list[dict] = []

    def do_POST(self):  # noqa: N802 (http.server's naming)
        _Hook.received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args):
        pass


def test_drift_is_notified_by_email_and_webhook_and_a_failed_notice_is_not_fatal(site, tmp_path):
    from aiosmtpd.controller import Controller
    from aiosmtpd.handlers import Sink

    class Inbox(Sink):
        messages: list = []

        async def handle_DATA(self, server, session, envelope):  # noqa: N802 (aiosmtpd's naming)
            Inbox.messages.append((envelope.rcpt_tos, envelope.content.decode()))
            return "250 OK"

    _, sessions, start = site
    smtp = Controller(Inbox(), hostname="127.0.0.1", port=free_port())
    smtp.start()
    hook = HTTPServer(("127.0.0.1", 0), _Hook)
    threading.Thread(target=hook.serve_forever, daemon=True).start()
    try:
        settings = load_settings(None, {"home": str(site[0].home), "notify.smtp_host": "127.0.0.1",
                                        "notify.smtp_port": smtp.port})
        add_audit(sessions, "notified", "0 0 * * *", "7d", "90d", email="physics@example.org",
                  webhook=f"http://127.0.0.1:{hook.server_port}/hook")
        run = run_audit(settings, sessions, "notified", now=start + timedelta(days=CHANGE + 7))
        assert run.drift
        assert Inbox.messages and Inbox.messages[0][0] == ["physics@example.org"]
        assert "contourqa audit notified: drift" in Inbox.messages[0][1]
        assert _Hook.received and _Hook.received[0]["audit"] == "notified" and _Hook.received[0]["drift"] is True
    finally:
        smtp.stop()
        hook.shutdown()
    # nobody listening now: the run is still recorded, the failure only logged
    add_audit(sessions, "unheard", "0 0 * * *", "7d", "90d", email="physics@example.org",
              webhook=f"http://127.0.0.1:{hook.server_port}/hook")
    assert run_audit(settings, sessions, "unheard", now=start + timedelta(days=CHANGE + 7)).drift


def test_the_image_profile_of_a_real_mr_names_its_scanner_and_body_intensities():
    from conftest import THIGH
    from contourqa.daemon.image_profile import image_profile
    from contourqa.qa_models.series import load_series

    profile = image_profile(load_series(THIGH / "image"))
    assert profile["scanner"].startswith("Philips") and profile["pixel_spacing_mm"] == pytest.approx(0.9766, abs=1e-3)
    assert profile["field_strength_t"] is None  # not in this anonymised header: recorded as unknown, not 0
    series = load_series(THIGH / "image")
    assert np.percentile(series.array, 5) < profile["intensity_p5"] < profile["intensity_p50"] < profile["intensity_p95"]
