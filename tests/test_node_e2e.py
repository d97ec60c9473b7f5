"""End to end: dcmtk storescu -> `contourqa serve` (embedded Redis, Celery workers) -> dcmtk storescp.

Faults are real: a worker process killed with SIGKILL, a destination that is down, a node stopped and
started again with work pending, a structure set whose images never arrive, eight concurrent senders.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.request
from collections import Counter

import highdicom as hd
import pydicom
import pytest

from node_harness import DCMTK_ENV, Destination, Node, approved_copy, clone_study, dcmtk, free_port, send, wait_for
from conftest import THIGH, draw_round_one_voxel, require_tool, run_cli
from contourqa.training.cache import load_cases
from contourqa.training.manifest import read_manifest

pytestmark = pytest.mark.slow

SR_CLASS = "1.2.840.10008.5.1.4.1.1.88.34"


def sr_verdicts(path) -> dict[str, str]:
    sr = hd.sr.srread(path)
    groups = sr.content.get_image_measurement_groups() + sr.content.get_volumetric_roi_measurement_groups()
    return {g.tracking_identifier.split(": ", 1)[1]: {e.name.value: e.value.value
                                                     for e in g.get_qualitative_evaluations()}["VERDICT"]
            for g in groups}


def test_rtstruct_and_seg_are_answered_with_a_valid_sr_per_structure_set(phantom, destination, node_factory,
                                                                         tmp_path):
    metrics_port = free_port()
    node = node_factory(export={"default_destination": destination.address}, metrics_port=metrics_port).start()
    echo = subprocess.run([dcmtk("echoscu"), "-aet", "PACS", "-aec", "CONTOURQA", "127.0.0.1", str(node.port)],
                          capture_output=True, text=True, timeout=30)
    assert echo.returncode == 0, echo.stderr
    intruder = subprocess.run([dcmtk("echoscu"), "-aet", "INTRUDER", "-aec", "CONTOURQA", "127.0.0.1",
                               str(node.port)], capture_output=True, text=True, timeout=30)
    assert intruder.returncode != 0 and "Calling AE Title Not Recognized" in intruder.stderr + intruder.stdout

    case = phantom / "case001"
    sent = send(node.port, case / "image", case / "candidates" / "auto01.dcm")
    assert sent.returncode == 0, sent.stderr
    first = wait_for(lambda: destination.received(), 60, "the RTSTRUCT's SR")
    sent = send(node.port, case / "candidates" / "auto01_binary_seg.dcm")
    assert sent.returncode == 0, sent.stderr
    received = wait_for(lambda: len(destination.received()) == 2 and destination.received(), 60, "the SEG's SR")

    status = node.status(cli=True)
    assert status["cases"]["done"] == 2 and status["outbox"]["sent"] == 2 and status["pending_cases"] == 0
    for path in received:
        check = subprocess.run([require_tool("dciodvfy"), str(path)], capture_output=True, text=True)
        assert [line for line in (check.stdout + check.stderr).splitlines() if line.startswith("Error")] == []
        verdicts = sr_verdicts(path)
        assert set(verdicts) == {"Prostate", "Bladder", "Rectum", "FemoralHead_L", "FemoralHead_R"}
        assert set(verdicts.values()) <= {"ACCEPT", "REVIEW", "REJECT"}
    assert first[0] in received
    listed = json.loads(run_cli("results", "--json", "--home", node.home).stdout)
    shown = json.loads(run_cli("show", listed[0]["case_id"], "--json", "--home", node.home).stdout)
    profile = shown["image_profile"]  # what the drift audits watch: scanner, spacing, intensities in the body
    assert profile["scanner"] != "unknown" and profile["pixel_spacing_mm"] > 0
    assert 0 < profile["intensity_p5"] < profile["intensity_p50"] < profile["intensity_p95"]

    scraped = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).read().decode()
    assert 'contourqa_cases{state="done"} 2.0' in scraped
    assert 'contourqa_associations_total{outcome="rejected"} 1.0' in scraped
    assert "contourqa_assessment_latency_seconds_count 2.0" in scraped
    assert "Phantom" not in node.log_text()  # patient names never reach the log


def test_an_image_outside_the_models_domain_is_answered_without_a_number(thigh_named_prostate, destination,
                                                                         node_factory, tmp_path):
    metrics_port = free_port()
    node = node_factory(export={"default_destination": destination.address}, metrics_port=metrics_port).start()
    sent = send(node.port, THIGH / "image", thigh_named_prostate)
    assert sent.returncode == 0, sent.stderr
    received = wait_for(lambda: destination.received(), 60, "the SR")
    assert sr_verdicts(received[0]) == {"Prostate": "REVIEW"}
    assert node.status()["rois_outside_domain"] == 1
    scraped = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).read().decode()
    assert "contourqa_rois_outside_domain_total 1.0" in scraped


def test_a_contour_the_model_cannot_read_is_counted_apart_from_the_domain(case_copy, destination, node_factory):
    """A Prostate drawn round one voxel gets no number because of the contour, not the image: the node counts
    it as unreadable, not as outside the domain, and the other ROIs keep their numbers."""
    draw_round_one_voxel(case_copy, "Prostate")
    metrics_port = free_port()
    node = node_factory(export={"default_destination": destination.address}, metrics_port=metrics_port).start()
    sent = send(node.port, case_copy / "image", case_copy / "reference.dcm")
    assert sent.returncode == 0, sent.stderr
    wait_for(lambda: destination.received(), 60, "the SR")
    status = node.status(cli=True)
    assert status["rois_unreadable"] == 1 and status["rois_outside_domain"] == 0
    rows = {row["roi"]: row for row in json.loads(run_cli("results", "--json", "--home", node.home).stdout)}
    assert rows["Prostate"]["predicted_dice"] is None and "read no organ's surface" in rows["Prostate"]["reason"]
    assert all(row["predicted_dice"] is not None for name, row in rows.items() if name != "Prostate")
    scraped = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).read().decode()
    assert "contourqa_rois_unreadable_total 1.0" in scraped and "contourqa_rois_outside_domain_total 0.0" in scraped


def node_running_a_case(phantom, destination, node_factory) -> Node:
    """A node in the middle of assessing a case. Many MC dropout passes make the case last a few seconds
    (200 with the v14 model: about 5 s on 2 idle cores; at 2000 the re-run after a kill outlasted the
    wait); the database is polled every 20 ms."""
    node = node_factory(export={"default_destination": destination.address}, assess={"mc_samples": 200}).start()
    case = phantom / "case001"
    assert send(node.port, case / "image", case / "candidates" / "auto02.dcm").returncode == 0
    wait_for(lambda: node.running_cases() == 1, 60, "the case to run", interval=0.02)
    return node


def test_a_worker_killed_mid_case_still_yields_exactly_one_sr(phantom, destination, node_factory):
    node = node_running_a_case(phantom, destination, node_factory)
    children = node.worker_children()
    assert children
    for pid in children:
        os.kill(pid, signal.SIGKILL)
    wait_for(lambda: destination.received(), 180, "the SR after the worker was killed")
    wait_for(lambda: node.status()["outbox"]["sent"] == 1, 30, "the outbox to record delivery")
    assert len(destination.received()) == 1
    assert "attempt 2" in node.log_text()


def test_a_destination_down_and_a_restart_lose_and_duplicate_nothing(phantom, tmp_path, node_factory):
    destination = Destination(tmp_path / "received")  # not started: down
    node = node_factory(export={"default_destination": destination.address}, assembly={"stable_age_s": 120}).start()
    studies = [clone_study(phantom / "case001", tmp_path / f"study{n}") for n in range(2)]
    for study in studies:
        assert send(node.port, study).returncode == 0
    wait_for(lambda: node.status()["outbox"]["pending"] == 2, 120, "both SRs waiting in the outbox")
    wait_for(lambda: "failed (attempt 2" in node.log_text(), 30, "retries with backoff")
    assert node.stop() == 0

    # a third study stored, its structure set before its images, while the node is down
    late = clone_study(phantom / "case001", tmp_path / "late")
    destination.start()
    try:
        node.start()
        structure = sorted(late.iterdir())[-1]
        assert send(node.port, structure).returncode == 0
        assert node.status()["cases"]["waiting"] == 1
        assert send(node.port, *sorted(late.iterdir())[:-1]).returncode == 0
        wait_for(lambda: len(destination.received()) == 3, 120, "all three SRs")
        wait_for(lambda: node.status()["outbox"]["sent"] == 3, 30, "the outbox to record delivery")
        assert sorted(Counter(destination.received_uids()).values()) == [1, 1, 1]
    finally:
        destination.stop()


def test_a_structure_set_whose_images_never_arrive_is_answered_and_reopens_when_they_do(phantom, tmp_path, destination,
                                                                       node_factory):
    node = node_factory(export={"default_destination": destination.address}).start()
    study = clone_study(phantom / "case001", tmp_path / "study")
    structure = sorted(study.iterdir())[-1]
    assert send(node.port, structure).returncode == 0
    failed = wait_for(lambda: node.status()["recent_failed_cases"], 60, "the case to fail")
    assert "referenced images never arrived" in failed[0]["reason"]
    assert len(list((node.home / "store").rglob("*.dcm"))) == 1  # the structure set is kept
    # the sender is told: an SR with the verdict NOT-ASSESSED and the reason, valid by dciodvfy
    answer = wait_for(lambda: destination.received(), 60, "the not-assessed SR")[0]
    content = subprocess.run([dcmtk("dsrdump"), "+Pl", str(answer)], capture_output=True, text=True).stdout
    assert "NOT-ASSESSED,99CQA" in content and "referenced images never arrived" in content
    check = subprocess.run([require_tool("dciodvfy"), str(answer)], capture_output=True, text=True)
    assert [line for line in (check.stdout + check.stderr).splitlines() if line.startswith("Error")] == []
    listed = json.loads(run_cli("results", "--home", node.home, "--verdict", "failed", "--json").stdout)
    assert [r["reason"] for r in listed] == [f"not assessed: {failed[0]['reason']}"]

    # the images arrive late: the failed case re-opens by itself and is answered like any other
    assert send(node.port, *sorted(study.iterdir())[:-1]).returncode == 0
    received = wait_for(lambda: len(destination.received()) == 2 and destination.received(), 90,
                        "the SR of the re-opened case")
    assessed = next(path for path in received if path != answer)
    assert set(sr_verdicts(assessed).values()) <= {"ACCEPT", "REVIEW", "REJECT"}
    case_id = listed[0]["case_id"]
    shown = json.loads(run_cli("show", case_id, "--home", node.home, "--json").stdout)
    assert shown["state"] == "done" and shown["reason"] is None and shown["references"]["stored"] > 0
    assert {r["roi"] for r in shown["rois"]} == {"Prostate", "Bladder", "Rectum", "FemoralHead_L", "FemoralHead_R"}
    assert json.loads(run_cli("results", "--home", node.home, "--verdict", "failed", "--json").stdout) == []


def test_eight_concurrent_senders_each_study_stored_and_reported_once(phantom, tmp_path, destination, node_factory):
    # on SQLite, the single-machine default; the whole node on PostgreSQL is test_split_deployment
    node = node_factory(export={"default_destination": destination.address}, assess={"mc_samples": 0}).start()
    studies = [clone_study(phantom / "case001", tmp_path / f"study{n}") for n in range(8)]
    senders = [subprocess.Popen([dcmtk("storescu"), "-R", "+sd", "-aet", "PACS", "-aec", "CONTOURQA", "127.0.0.1",
                                 str(node.port), str(study)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                env=DCMTK_ENV)
               for study in studies]
    assert [p.wait(timeout=300) for p in senders] == [0] * 8
    wait_for(lambda: len(destination.received()) == 8, 300, "eight SRs")
    files = list((node.home / "store").rglob("*.dcm"))
    assert len(files) == sum(len(list(s.iterdir())) for s in studies)
    status = wait_for(lambda: (s := node.status())["outbox"]["sent"] == 8 and s, 30, "eight deliveries")
    assert status["cases"]["done"] == 8
    assert sorted(Counter(destination.received_uids()).values()) == [1] * 8


def test_a_killed_worker_has_its_case_redone_within_30_s_and_a_killed_redis_is_started_again(
        phantom, tmp_path, destination, node_factory):
    # its pool process dies with it; the default heartbeat (5 s, released after three missed beats) decides
    # how soon another worker takes the case, not the broker's visibility timeout (2 x time_limit_s + 60 s)
    node = node_running_a_case(phantom, destination, node_factory)
    mains = node.worker_mains()
    assert mains
    for pid in mains:
        os.kill(pid, signal.SIGKILL)
    killed = time.monotonic()
    wait_for(lambda: "(attempt 2)" in node.log_text(), 30, "the case to be redone within 30 s of the kill")
    assert time.monotonic() - killed <= 30
    assert "its message or worker was lost; dispatched again" in node.log_text()
    wait_for(lambda: destination.received(), 180, "the SR of the redone case")
    wait_for(lambda: node.status()["outbox"]["sent"] == 1, 30, "the outbox to record delivery")
    assert len(destination.received()) == 1

    # the embedded Redis dies (killed, out of memory): serve starts it again and the next study is answered
    [redis] = node.embedded_redis()
    os.kill(redis, signal.SIGKILL)
    wait_for(lambda: node.embedded_redis() not in ([], [redis]), 30, "serve to start Redis again")
    study = clone_study(phantom / "case001", tmp_path / "after-redis")
    assert send(node.port, study).returncode == 0
    wait_for(lambda: len(destination.received()) == 2, 180, "the SR of a study sent after Redis came back")
    assert "embedded Redis exited with status -9; starting it again" in node.log_text()
    assert "Traceback" not in node.log_text()


def test_the_approved_version_of_an_auto_contour_gives_its_real_dice(phantom, destination, node_factory, tmp_path):
    node = node_factory(export={"default_destination": destination.address}).start()
    case = phantom / "case001"
    auto = case / "candidates" / "auto01.dcm"
    assert send(node.port, case / "image", auto).returncode == 0
    wait_for(lambda: destination.received(), 60, "the auto-contour's SR")
    auto_id = str(pydicom.dcmread(auto, stop_before_pixels=True).SOPInstanceUID)

    def rois():
        return json.loads(run_cli("show", auto_id, "--json", "--home", node.home).stdout)["rois"]

    # approved unchanged: every ROI agrees perfectly with its approved version
    approved_copy(auto, tmp_path / "same.dcm")
    assert send(node.port, tmp_path / "same.dcm").returncode == 0
    unchanged = wait_for(lambda: all(r["real_dice"] is not None for r in rois()) and rois(), 60, "the real Dice")
    assert {r["roi"]: (r["real_dice"], r["hd95_mm"]) for r in unchanged} == {r["roi"]: (1.0, 0.0) for r in unchanged}
    # approved after editing (the phantom's reference): the Dice the training pipeline computes for this pair
    approved_copy(case / "reference.dcm", tmp_path / "edited.dcm")
    assert send(node.port, tmp_path / "edited.dcm").returncode == 0
    changed = wait_for(lambda: all(r["real_dice"] < 1 for r in rois()) and rois(), 60, "the edited version's Dice")
    rows = [r for r in read_manifest(phantom / "manifest.csv") if r.candidate == auto.resolve()]
    expected = {c.row.roi: c.dice for c in load_cases(rows)[0].candidates}
    assert {r["roi"]: r["real_dice"] for r in changed} == pytest.approx(expected, abs=1e-9)
    assert all(r["hd95_mm"] > 0 for r in changed)
    time.sleep(2)
    assert len(destination.received()) == 1  # the approved versions are compared, not answered

    listed = json.loads(run_cli("results", "--json", "--home", node.home).stdout)
    assert sum(r["verdict"] == "approved" for r in listed) == 2
    summary = run_cli("report", "daily", "--home", node.home)
    page = open(summary.stdout.strip()).read()
    given = sum(r["predicted_dice"] is not None for r in changed)  # the ones the model gave a number
    assert given >= 3 and f"{given} ROIs whose approved version came back" in page
    exported = run_cli("export-training", "--out", tmp_path / "site.csv", "--home", node.home)
    assert exported.returncode == 0, exported.stderr
    pairs = read_manifest(tmp_path / "site.csv")
    assert len(pairs) == 5 and {p.reference for p in pairs} == {pairs[0].reference}
    again = {c.row.roi: c.dice for c in load_cases(pairs)[0].candidates}  # ready for `contourqa train`
    assert again == pytest.approx(expected, abs=1e-9)
