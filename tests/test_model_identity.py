"""A model is known by a digest of its weights, guard and card: recorded when written, checked when loaded,
carried into each result; and a redone case writes the same SR apart from its timestamps."""

import json
import logging
import shutil

import pydicom
import pytest
import torch

from conftest import run_cli
from contourqa.daemon.case_runner import sr_identity
from contourqa.qa_models.assessment import assess_files
from contourqa.qa_models.predictor import DicePredictor, default_model_dir, model_digest, read_card, shipped_model_dir
from contourqa.qa_models.sr_report import write_sr


@pytest.mark.parametrize("name", ["edge-picker", "edge-picker-three-styles", "phantom-v15"])
def test_each_shipped_card_records_the_digest_of_its_folder(name):
    card = read_card(shipped_model_dir(name))
    assert card.sha256 is not None and len(card.sha256) == 64
    assert card.sha256 == model_digest(card, shipped_model_dir(name))


def test_the_same_name_and_version_with_other_weights_is_another_model(tmp_path, caplog):
    copy, v15 = tmp_path / "model", shipped_model_dir("phantom-v15")
    shutil.copytree(v15, copy)
    states = torch.load(copy / "weights.pt", weights_only=True)
    first = next(iter(states[0]))
    states[0][first] = states[0][first] + 1e-3
    torch.save(states, copy / "weights.pt")
    with caplog.at_level(logging.WARNING):
        loaded = DicePredictor.from_model_folder(copy, "cpu")
    original = read_card(v15)
    assert (loaded.card.name, loaded.card.version) == (original.name, original.version)
    assert loaded.card.sha256 != original.sha256
    assert "changed after the card was written" in caplog.text


def test_the_digest_reaches_assess_json_and_the_sr(phantom, tmp_path):
    study = phantom / "case000"
    result = run_cli("assess", study / "image", study / "candidates" / "auto01.dcm", "--json", "--sr", tmp_path / "sr.dcm")
    assert result.returncode == 0, result.stderr
    digest = read_card(default_model_dir()).sha256
    assert json.loads(result.stdout)["model"]["sha256"] == digest
    sr = pydicom.dcmread(tmp_path / "sr.dcm")
    parameters = [item.TextValue for item in _content_items(sr)
                  if item.ConceptNameCodeSequence[0].CodeMeaning == "Algorithm Parameters"]
    assert f"sha256:{digest}" in parameters


def _content_items(dataset):
    for item in dataset.get("ContentSequence", []):
        yield item
        yield from _content_items(item)


def _without_times(path) -> list:
    """Every element, nested ones included, in order; dates and times left out."""
    return [(element.tag, element.value) for element in pydicom.dcmread(path).iterall()
            if element.VR not in ("DA", "TM", "DT", "SQ")]


def test_a_redone_case_writes_the_same_sr_apart_from_its_timestamps(phantom, tmp_path):
    study = phantom / "case001"
    structure = study / "candidates" / "auto01.dcm"
    identity = sr_identity("1.2.826.0.1.3680043.8.498.77")
    first = write_sr(assess_files(study / "image", structure), tmp_path / "first.dcm", identity)
    second = write_sr(assess_files(study / "image", structure), tmp_path / "second.dcm", identity)
    assert _without_times(first) == _without_times(second)
    other = write_sr(assess_files(study / "image", structure), tmp_path / "other.dcm", sr_identity("1.2.3"))
    tracking = [e.value for e in pydicom.dcmread(first).iterall() if e.keyword == "UID"]
    assert tracking and not set(tracking) & {e.value for e in pydicom.dcmread(other).iterall() if e.keyword == "UID"}
