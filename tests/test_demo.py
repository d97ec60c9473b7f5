"""`contourqa demo` as a new user runs it: a node of its own on a temporary home, a study over DICOM,
the SR back, checked, with the verdicts and their reasons printed."""

import subprocess

import pydicom
import pytest

from conftest import require_tool, run_cli
from node_harness import free_port


@pytest.mark.slow
def test_demo_sends_a_study_through_a_node_and_prints_the_verdicts(tmp_path):
    result = run_cli("demo", "--work", tmp_path / "demo", "--timeout", "240")
    assert result.returncode == 0, result.stderr[-2000:]
    table = result.stdout.splitlines()
    assert table[0].split()[:3] == ["ROI", "predicted", "Dice"]
    assert [line.split()[0] for line in table[1:6]] == ["Prostate", "Bladder", "Rectum", "FemoralHead_L",
                                                          "FemoralHead_R"]
    sr_path = tmp_path / "demo" / "qa-report.dcm"
    assert f"SR: {sr_path}" in result.stdout
    sent = pydicom.dcmread(tmp_path / "demo" / "study" / "case000" / "candidates" / "auto02.dcm")
    assert pydicom.dcmread(sr_path).StudyInstanceUID == sent.StudyInstanceUID
    check = subprocess.run([require_tool("dciodvfy"), str(sr_path)], capture_output=True, text=True)
    assert not [line for line in (check.stdout + check.stderr).splitlines() if line.startswith("Error")]


def test_demo_against_a_node_that_is_not_there_says_so_in_one_line(tmp_path):
    result = run_cli("demo", "--node", f"CONTOURQA@127.0.0.1:{free_port()}", "--listen", str(free_port()),
                     "--work", tmp_path / "demo")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("contourqa: error: no association with CONTOURQA@127.0.0.1:")
    assert "Traceback" not in result.stderr


def test_demo_with_a_node_needs_the_port_the_sr_comes_back_on():
    result = run_cli("demo", "--node", "CONTOURQA@127.0.0.1:11112")
    assert result.returncode == 2 and "--node needs --listen PORT" in result.stderr
