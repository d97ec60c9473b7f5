"""The domain guard of a network (the shipped phantom network v15): no confident number on an image the
model does not know. The edge picker's guard, its spread, is tested in test_picker_model.py."""

import csv
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest

from conftest import THIGH, one_case_manifest, require_tool, run_cli, set_image_tags
from contourqa.qa_models.assessment import AssessConfig, assess_files
from contourqa.qa_models.domain import DomainCard, DomainGuard
from contourqa.qa_models.errors import InputError
from contourqa.qa_models.predictor import DicePredictor, read_card, shipped_model_dir, write_card
from contourqa.qa_models.sr_report import INSIDE_DOMAIN, SrIdentity, write_sr

V15 = shipped_model_dir("phantom-v15")



def test_guard_measures_distance_in_units_of_the_training_spread():
    rng = np.random.default_rng(0)
    features = rng.normal(size=(400, 6)) * [1, 2, 3, 4, 5, 6]
    names = ["Prostate"] * 200 + ["Bladder"] * 200
    features[200:] += 10  # the bladder's inputs sit elsewhere
    guard = DomainGuard.fit(features, names)
    inside = guard.distances(features, names)
    assert 1.5 < np.median(inside) < 3.5  # about sqrt(6) for 6 standardised features
    far = np.array([[0, 0, 0, 0, 0, 60.0]])  # 10 spreads out along the widest axis
    assert guard.distances(far, ["Prostate"])[0] > 8
    # a ROI is measured against its own class: a prostate-like input named Bladder is far
    assert guard.distances(features[:1], ["Bladder"])[0] > guard.distances(features[:1], ["Prostate"])[0] + 3
    # an unknown name takes the nearest class
    assert guard.distances(features[:1], ["GTV"])[0] == pytest.approx(guard.distances(features[:1], ["Prostate"])[0])


def test_guard_file_round_trip_and_refusal(tmp_path):
    rng = np.random.default_rng(1)
    guard = DomainGuard.fit(rng.normal(size=(100, 4)), ["a"] * 50 + ["b"] * 50)
    guard.save(tmp_path)
    card = DomainCard(roi_names=guard.roi_names, threshold=3.0, quantile=1.0)
    loaded = DomainGuard.load(tmp_path, card)
    x = rng.normal(size=(3, 4))
    assert np.allclose(loaded.distances(x, ["a"] * 3), guard.distances(x, ["a"] * 3))
    with pytest.raises(InputError, match="do not match"):
        DomainGuard.load(tmp_path, card.model_copy(update={"roi_names": ["a", "b", "c"]}))


def test_shipped_model_has_a_guard_and_its_phantom_studies_are_inside(phantom):
    predictor = DicePredictor.from_model_folder(V15)
    assert predictor.guard is not None and predictor.card.domain.threshold > 0
    study = phantom / "case001"
    report = json.loads(run_cli("assess", study / "image", study / "reference.dcm", "--model", V15, "--json", "--mc-samples", "0").stdout)
    for roi in report["rois"]:
        assert roi["domain"]["inside"], roi
        assert roi["predicted_dice"] > 0.75 and not any("domain" in w for w in roi["warnings"])


def test_real_mr_of_other_anatomy_gets_no_number_a_warning_and_review(thigh_named_prostate, tmp_path):
    result = run_cli("assess", THIGH / "image", thigh_named_prostate, "--model", "phantom-v15", "--json", "--sr", tmp_path / "sr.dcm")
    assert result.returncode == 0, result.stderr
    roi = json.loads(result.stdout)["rois"][0]
    assert roi["predicted_dice"] is None and "predicted_dice_interval" not in roi
    assert roi["domain"]["inside"] is False and roi["domain"]["score"] > roi["domain"]["threshold"]
    assert any("outside the model's training domain" in w and "contourqa train --init-from" in w for w in roi["warnings"])
    assert roi["verdict"] in ("review", "reject")
    # the SR: no Dice measurement, an "inside the training domain: No" evaluation, and dciodvfy-clean
    dump = subprocess.run([require_tool("dsrdump"), str(tmp_path / "sr.dcm")], capture_output=True, text=True).stdout
    assert "Dice Similarity Coefficient" not in dump
    assert f'"{INSIDE_DOMAIN.meaning}")=(373067005,SCT,"No")' in dump
    check = subprocess.run([require_tool("dciodvfy"), str(tmp_path / "sr.dcm")], capture_output=True, text=True)
    assert [line for line in (check.stdout + check.stderr).splitlines() if line.startswith("Error")] == []
    table = run_cli("assess", THIGH / "image", thigh_named_prostate, "--model", V15, "--mc-samples", "0").stdout.splitlines()
    assert "withheld" in table[1] and "image outside the model's training domain (domain score" in table[1]
    # its header says so too: Body Part Examined EXTREMITY is not an anatomy the shipped model was fitted on
    assert roi["domain"]["body_part"] == "EXTREMITY" and roi["domain"]["body_part_known"] is False
    assert "; body part EXTREMITY, not ABDOMENPELVIS or BLADDER or PELVIS" in table[1]


def test_an_image_naming_another_body_part_gets_no_number_whatever_its_features(case_copy):
    """Features of a crop see style, not anatomy: the header's body part is checked beside them."""
    predictor = DicePredictor.from_model_folder(V15)
    quick = AssessConfig(mc_samples=0)
    set_image_tags(case_copy / "image", BodyPartExamined=" knee")  # padded and lower case, as some scanners write it
    roi = assess_files(case_copy / "image", case_copy / "reference.dcm", quick, predictor=predictor).rois[0]
    assert roi.prediction is None and roi.outside_domain and roi.verdict.value == "review"
    assert roi.domain.score <= roi.domain.threshold  # its features alone would have let it through
    assert roi.domain.as_dict()["body_part"] == "KNEE" and roi.domain.as_dict()["body_part_known"] is False
    assert any("body part KNEE, not ABDOMENPELVIS or BLADDER or PELVIS or PROSTATE or RECTUM" in w
               for w in roi.warnings)
    assert [r.rule for r in roi.reasons] == ["outside_domain"]
    # a site's own term for the anatomy, on the command line (or assess.extra_body_parts in the node's config)
    report = json.loads(run_cli("assess", case_copy / "image", case_copy / "reference.dcm", "--json", "--model", V15,
                                "--mc-samples", "0", "--body-part", "Knee").stdout)
    assert all(r["predicted_dice"] is not None and r["domain"]["body_part_known"] for r in report["rois"])
    # an image naming no body part is judged by its features alone
    set_image_tags(case_copy / "image", BodyPartExamined=None)
    roi = assess_files(case_copy / "image", case_copy / "reference.dcm", quick, predictor=predictor).rois[0]
    assert roi.prediction is not None and "body_part" not in roi.domain.as_dict()


def test_real_ct_is_outside_whatever_the_modality_check_says(realdata):
    """The modality check already refuses CT; the guard must too, on its own."""
    ct = realdata / "rt-utils" / "tests" / "mock_data"
    from contourqa.qa_models.series import load_series

    series = load_series(ct)
    predictor = DicePredictor.from_model_folder(V15)
    j, i = np.indices(series.grid.shape[1:])
    mask = np.broadcast_to(((j - 256) ** 2 + (i - 256) ** 2) < 40 ** 2, series.grid.shape)
    prediction = predictor.predict(series.array, mask, series.grid, roi_name="Bladder")
    assert not prediction.domain.inside and not prediction.trusted


def test_guard_command_fits_a_model_and_the_node_reads_it(phantom, tmp_path, thigh_named_prostate):
    model = tmp_path / "model"  # as `contourqa train` leaves it: no guard
    shutil.copytree(V15, model)
    (model / "domain.npz").unlink()
    write_card(read_card(model).model_copy(update={"domain": None}), model)
    fit, held = one_case_manifest(phantom, "case000", tmp_path), one_case_manifest(phantom, "case001", tmp_path)
    same = run_cli("guard", "--fit", fit, "--threshold", fit, "--model", model)
    assert same.returncode == 2 and "not fitted on" in same.stderr and "Traceback" not in same.stderr
    result = run_cli("guard", "--fit", fit, "--threshold", held, "--model", model, "--body-part", "prostate ")
    assert result.returncode == 0, result.stderr
    assert "body parts PELVIS, PROSTATE" in result.stdout  # the phantom images name PELVIS; the option adds one
    predictor = DicePredictor.from_model_folder(model)
    assert predictor.card.domain.fitted_on["cases"] == 1 and predictor.card.domain.threshold_from["cases"] == 1
    assert predictor.card.domain.quantile == 0.99  # one far held-out study must not set the threshold
    assert predictor.card.domain.body_parts == ["PELVIS", "PROSTATE"]
    assessment = assess_files(THIGH / "image", thigh_named_prostate, predictor=predictor)
    assert assessment.rois[0].outside_domain and assessment.rois[0].prediction is None


def _realistic_scores(predictor: DicePredictor, manifest: Path) -> list[float]:
    """The guard's score of every realistic candidate in ``manifest``, as `assess` measures it."""
    with open(manifest, newline="") as rows:
        rows = [r for r in csv.DictReader(rows) if not r["kind"].startswith("failure")]
    scores = []
    for candidate in sorted({r["candidate"] for r in rows}):
        wanted = {r["roi"] for r in rows if r["candidate"] == candidate}
        image = next(r["image"] for r in rows if r["candidate"] == candidate)
        assessment = assess_files(Path(image), Path(candidate), AssessConfig(mc_samples=0), predictor=predictor)
        scores += [roi.domain.score for roi in assessment.rois if roi.name in wanted]
    return scores


def test_guard_threshold_set_on_several_styles_is_the_largest_of_their_own(phantom, tmp_path):
    """One held-out set per style: each stays inside as often as the quantile says. Pooled, the style nearer
    the training inputs would pull the threshold below what the other needs."""
    synth = tmp_path / "synth"
    assert run_cli("phantom", synth, "--style", "synth", "--cases", "1", "--seed", "4",
                   "--size", "64", "64", "8").returncode == 0
    model = tmp_path / "model"
    shutil.copytree(V15, model)
    (model / "domain.npz").unlink()
    write_card(read_card(model).model_copy(update={"domain": None}), model)
    (tmp_path / "classic").mkdir()
    fit = one_case_manifest(phantom, "case000", tmp_path)
    classic = one_case_manifest(phantom, "case001", tmp_path / "classic")
    other = one_case_manifest(synth, "case000", synth)
    missing = run_cli("guard", "--fit", fit, "--threshold", classic, "--threshold", tmp_path / "none.csv",
                      "--model", model)
    assert missing.returncode == 2 and len(missing.stderr.strip().splitlines()) == 1, missing.stderr
    assert read_card(model).domain is None and not (model / "domain.npz").exists()  # refused before fitting
    result = run_cli("guard", "--fit", fit, "--threshold", classic, "--threshold", other, "--model", model,
                     "--quantile", "0.5")
    assert result.returncode == 0, result.stderr
    assert "the largest of 2 sets" in result.stdout
    card = read_card(model).domain
    assert card.threshold_from["manifest"] == "classic/case001.csv, synth/case000.csv"
    predictor = DicePredictor.from_model_folder(model)
    own, far = _realistic_scores(predictor, classic), _realistic_scores(predictor, other)
    assert np.median(far) > np.median(own)  # the styles differ as the test needs
    assert card.threshold == pytest.approx(np.median(far), rel=1e-3)
    assert card.threshold > np.median(own + far)


def test_a_card_naming_a_guard_without_its_file_is_refused(tmp_path):
    model = tmp_path / "model"
    shutil.copytree(V15, model)
    (model / "domain.npz").unlink()
    with pytest.raises(InputError, match="domain guard"):
        DicePredictor.from_model_folder(model)


def test_sr_of_an_outside_roi_reads_back(thigh_named_prostate, tmp_path):
    assessment = assess_files(THIGH / "image", thigh_named_prostate,
                              predictor=DicePredictor.from_model_folder(V15))
    identity = SrIdentity("1.2.826.0.1.3680043.8.498.11", "1.2.826.0.1.3680043.8.498.12")
    sr = pydicom.dcmread(write_sr(assessment, tmp_path / "sr.dcm", identity))
    assert len(sr.StudyID) <= 16  # the input's 20-character Study ID is cut to fit SH


def test_a_home_made_before_the_guard_gains_its_columns(tmp_path):
    """An upgraded node opens the database an older release created, results and all."""
    import sqlite3

    from sqlalchemy import select

    from contourqa.daemon.db import RoiResult, open_database

    url = f"sqlite:///{tmp_path / 'index.sqlite'}"
    open_database(url)
    with sqlite3.connect(tmp_path / "index.sqlite") as connection:
        connection.execute("ALTER TABLE roi_results DROP COLUMN domain_score")
        connection.execute("ALTER TABLE roi_results DROP COLUMN domain_inside")
    sessions = open_database(url)
    with sessions() as session:
        session.add(RoiResult(case_id="c", roi_number=1, name="Prostate", verdict="review", volume_ml=1.0,
                              screens=[], warnings=[], domain_score=40.0, domain_inside=False))
        session.commit()
        assert session.scalars(select(RoiResult.domain_inside)).all() == [False]
