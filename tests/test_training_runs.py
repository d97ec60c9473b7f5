"""`contourqa train` without the shared quick model: resuming, sample workers, the rasterised cache, the
sample sources and the experimental network inputs. Apart from test_training.py so that the two files
run on two test workers."""

import json

import numpy as np
import pytest
import torch

from conftest import run_cli
from contourqa.qa_models.predictor import DicePredictor, read_card
from contourqa.training.cache import load_cases
from contourqa.training.manifest import read_manifest


def test_resume_continues_exactly_where_it_stopped(phantom, phantom_cache, tmp_path):
    common = ["--manifest", phantom / "manifest.csv", "--quick", "--seed", "5", "--steps-per-epoch", "3",
              "--cache", phantom_cache]
    assert run_cli("train", *common, "--out", tmp_path / "straight", "--epochs", "2").returncode == 0
    assert run_cli("train", *common, "--out", tmp_path / "stopped", "--epochs", "1").returncode == 0
    resumed = run_cli("train", *common, "--out", tmp_path / "stopped", "--epochs", "2", "--resume")
    assert resumed.returncode == 0, resumed.stderr
    a = torch.load(tmp_path / "straight" / "weights.pt", weights_only=True)[0]
    b = torch.load(tmp_path / "stopped" / "weights.pt", weights_only=True)[0]
    assert a.keys() == b.keys()
    assert all(torch.allclose(a[k].float(), b[k].float(), atol=1e-5) for k in a)


def test_sample_workers_train_reproducibly_and_resume_exactly(phantom, phantom_cache, tmp_path):
    """`--workers N`: N processes draw the samples (worker w from the seed of (seed, fold, epoch, w)), so a
    run with workers is repeatable and resumes bit for bit, and it draws other samples than one without."""
    common = ["--manifest", phantom / "manifest.csv", "--quick", "--seed", "5", "--steps-per-epoch", "3",
              "--cache", phantom_cache]
    assert run_cli("train", *common, "--out", tmp_path / "straight", "--epochs", "2", "--workers", "2").returncode == 0
    assert run_cli("train", *common, "--out", tmp_path / "stopped", "--epochs", "1", "--workers", "2").returncode == 0
    resumed = run_cli("train", *common, "--out", tmp_path / "stopped", "--epochs", "2", "--workers", "2", "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert run_cli("train", *common, "--out", tmp_path / "serial", "--epochs", "2").returncode == 0
    a, b, serial = (torch.load(tmp_path / name / "weights.pt", weights_only=True)[0]
                    for name in ("straight", "stopped", "serial"))
    assert all(torch.allclose(a[k].float(), b[k].float(), atol=1e-5) for k in a)
    assert not all(torch.allclose(a[k].float(), serial[k].float(), atol=1e-5) for k in a)
    assert read_card(tmp_path / "straight").training_data["config"]["workers"] == 2


def test_cases_rasterised_by_several_processes_equal_those_of_one(phantom, tmp_path):
    rows = read_manifest(phantom / "manifest.csv")
    parallel = load_cases(rows, tmp_path / "parallel", workers=2)
    serial = load_cases(rows, tmp_path / "serial")
    assert [c.case_id for c in parallel] == [c.case_id for c in serial] and len(parallel) == 2
    assert len(list((tmp_path / "parallel").glob("*.npz"))) == 2
    for p, s in zip(parallel, serial):
        assert np.array_equal(p.image, s.image)
        assert [c.dice for c in p.candidates] == [c.dice for c in s.candidates]
        assert all(np.array_equal(a.mask, b.mask) for a, b in zip(p.candidates, s.candidates))


def test_learning_rate_drops_tenfold_where_configured():
    from contourqa.training.train import TrainConfig

    stated = TrainConfig(epochs=10, learning_rate=0.01, lr_drop_epochs=(3, 7))
    assert [stated.learning_rate_at(e) for e in (0, 2, 3, 6, 7, 9)] == pytest.approx([1e-2, 1e-2, 1e-3, 1e-3, 1e-4, 1e-4])
    published = TrainConfig(epochs=10, learning_rate=0.01)  # tenfold after 60 % of the epochs
    assert [published.learning_rate_at(e) for e in (5, 6)] == pytest.approx([1e-2, 1e-3])


def test_entropy_channel_model_learns_from_fractional_segments(phantom, tmp_path):
    """`train --entropy-channel`: the FRACTIONAL SEG candidates keep their probabilities through the cache,
    the card records the third channel, and at inference the entropy reaches the network."""
    from contourqa.qa_models.assessment import load_structure, structure_masks, AssessConfig
    from contourqa.qa_models.series import load_series

    out = tmp_path / "entropy"
    result = run_cli("train", "--manifest", phantom / "manifest.csv", "--out", out, "--quick", "--entropy-channel",
                     "--epochs", "2", "--steps-per-epoch", "4")
    assert result.returncode == 0, result.stderr
    assert read_card(out).input.channels == ("image", "mask", "entropy")
    cases = load_cases(read_manifest(phantom / "manifest.csv"), out / "cache")  # read back from the cache
    fractional = [c for case in cases for c in case.candidates if "fractional" in c.row.candidate.name]
    assert fractional and all(c.probabilities is not None and 0 < c.probabilities.max() <= 1 for c in fractional)
    assert all(c.probabilities is None for case in cases for c in case.candidates if "binary" in c.row.candidate.name)

    predictor = DicePredictor.from_model_folder(out)
    study = phantom / "case000"
    series = load_series(study / "image")
    roi, _ = structure_masks(load_structure(study / "candidates" / "auto02_fractional_seg.dcm"), series, AssessConfig())[0]
    with_entropy = predictor.predict(series.array, roi.mask, series.grid, probabilities=roi.probabilities)
    without = predictor.predict(series.array, roi.mask, series.grid)
    assert with_entropy.dice != without.dice
    report = run_cli("assess", study / "image", study / "candidates" / "auto02_fractional_seg.dcm", "--model", out,
                     "--json")
    assert report.returncode == 0, report.stderr
    first = json.loads(report.stdout)["rois"][0]
    assert first["predicted_dice"] == pytest.approx(with_entropy.dice, abs=1e-4)


def test_reference_drawing_model_trains_and_assesses_with_an_interval(phantom, phantom_cache, tmp_path):
    """`train --arch efficientdet3d-seg` trains on reference crops as well as Dice values, and `assess`
    gives its Dice with a Monte Carlo dropout interval; here on the edge layout (`--edge-only`: no grey
    values), whose mask channel is the one the reference head scores."""
    out = tmp_path / "seg"
    result = run_cli("train", "--manifest", phantom / "manifest.csv", "--out", out, "--quick", "--edge-only",
                     "--arch", "efficientdet3d-seg", "--epochs", "1", "--steps-per-epoch", "3", "--cache", phantom_cache)
    assert result.returncode == 0, result.stderr
    card = read_card(out)
    assert (card.architecture, card.input.channels) == ("efficientdet3d-seg", ("edge", "mask", "distance"))
    study = phantom / "case000"
    report = run_cli("assess", study / "image", study / "reference.dcm", "--model", out, "--mc-samples", "4", "--json")
    assert report.returncode == 0, report.stderr
    for roi in json.loads(report.stdout)["rois"]:
        assert 0 <= roi["predicted_dice_interval"][0] <= roi["predicted_dice"] <= roi["predicted_dice_interval"][1] <= 1
    # one network, so the point estimate is its dropout-free pass alone, and with one dropout draw the 5th and
    # 95th percentiles of the two values both lie strictly between them: the interval must be widened to
    # contain the estimate it is reported with
    predictor = DicePredictor.from_model_folder(out)
    assert len(predictor.networks) == 1
    case = load_cases(read_manifest(phantom / "manifest.csv"), phantom_cache)[0]
    for name, mask in case.references.items():
        prediction = predictor.predict(case.image, mask, case.grid, mc_samples=1)
        assert prediction.low < prediction.high, name  # the dropout draw differs from the pass without it
        assert prediction.low <= prediction.dice <= prediction.high, name


def test_reference_crops_are_cropped_and_augmented_as_the_input(phantom, phantom_cache):
    """A sample's reference crop lies exactly under its input: for the reference itself as candidate the
    crop equals the mask channel under any augmentation, and for a perturbed candidate the Dice between
    the crops is near the true Dice."""
    from contourqa.qa_models.crop import InputSpec
    from contourqa.reporting.overlap import dice
    from contourqa.training.samples import SampleGenerator, perturb
    cases = load_cases(read_manifest(phantom / "manifest.csv"), phantom_cache)
    generator = SampleGenerator(cases, InputSpec(shape=(16, 32, 32)), np.random.default_rng(4), with_reference=True)
    case = cases[0]
    for roi, reference in case.references.items():
        x, crop = generator.input_for(case, reference, reference=reference)
        assert torch.equal(x[1:2], crop), roi
        candidate = perturb(reference, case.grid.spacing, generator.rng)
        x, crop = generator.input_for(case, candidate, reference=reference)
        inside, drawn = x[1] > 0.5, crop[0] > 0.5
        crop_dice = 2 * (inside & drawn).sum().item() / (inside.sum().item() + drawn.sum().item())
        assert crop_dice == pytest.approx(dice(candidate, reference), abs=0.06), roi
    inputs, targets, references = generator.batch(3)
    assert references.shape == (3, 1, 16, 32, 32) and inputs.shape[0] == targets.shape[0] == 3


def test_manifest_without_required_columns(tmp_path):
    manifest = tmp_path / "m.csv"
    manifest.write_text("case_id,image\nx,y\n")
    result = run_cli("train", "--manifest", manifest, "--out", tmp_path / "m", "--quick")
    assert result.returncode == 2 and "lacks column(s) reference, candidate, roi" in result.stderr


def test_folds_never_split_a_patient():
    from contourqa.training.cache import Candidate, CachedCase
    from contourqa.training.manifest import ManifestRow
    from contourqa.training.train import _folds

    def case(case_id, patient):
        row = ManifestRow(case_id, None, None, None, "Prostate", clinical={"patient_id": patient})
        return CachedCase(case_id, None, None, "MR", {}, [Candidate(row, None, 1.0)])

    cases = [case(f"c{n}", f"p{n // 2}") for n in range(8)]  # two studies per patient
    for train, validation in _folds(cases, 3, seed=0):
        seen = {c.candidates[0].row.clinical["patient_id"] for c in train}
        assert not seen & {c.candidates[0].row.clinical["patient_id"] for c in validation}
        assert len(train) + len(validation) == 8


def test_realistic_error_source_samples_the_clinical_dice_range():
    from contourqa.reporting.overlap import dice
    from contourqa.training.samples import perturb
    k, j, i = np.ogrid[:30, :80, :80]
    sphere = ((i - 40) ** 2 + (j - 40) ** 2 + ((k - 15) * 3) ** 2) < 20 ** 2  # 40 mm across, 1 x 1 x 3 mm voxels
    spacing = np.array([1.0, 1.0, 3.0])
    scores = np.array([dice(perturb(sphere, spacing, np.random.default_rng(n)), sphere) for n in range(200)])
    assert scores.min() > 0.5 and np.mean(scores >= 0.8) > 0.6 and np.mean(scores < 0.97) > 0.6
    again = perturb(sphere, spacing, np.random.default_rng(7))
    assert np.array_equal(again, perturb(sphere, spacing, np.random.default_rng(7)))


def test_cached_cases_hold_candidates_compactly(phantom, tmp_path):
    """Training holds every case in memory, so candidate masks are kept bit-packed and FRACTIONAL
    probabilities as bytes (320 studies held expanded ran out of 24 GiB); both come back from the cache
    unchanged, with the candidates' true Dice."""
    from contourqa.reporting.overlap import dice
    from contourqa.training.cache import load_case

    rows = read_manifest(phantom / "manifest.csv")
    rows = [r for r in rows if r.case_id == rows[0].case_id]
    fresh = load_case(rows, tmp_path)  # rasterised from DICOM and written to the cache
    cached = load_case(rows, tmp_path)  # read back from the cache
    assert len(cached.candidates) == len(rows)
    assert any(c.mask.any() for c in cached.candidates) and any(not c.mask.all() for c in cached.candidates)
    for made, read in zip(fresh.candidates, cached.candidates):
        assert read.mask.dtype == bool and read.mask.shape == cached.image.shape
        assert np.array_equal(made.mask, read.mask)
        assert read.packed_mask.nbytes == -(-read.mask.size // 8)
        assert read.dice == pytest.approx(dice(read.mask, cached.references[read.row.roi.lower()]))
    fractional = [(made, read) for made, read in zip(fresh.candidates, cached.candidates) if made.probabilities is not None]
    assert fractional
    for made, read in fractional:
        assert read.probability_bytes.dtype == np.uint8 and read.probability_bytes.shape == cached.image.shape
        assert np.array_equal(made.probabilities, read.probabilities) and read.probabilities.max() <= 1


def test_candidate_share_sets_how_often_the_manifest_candidates_are_drawn(phantom, tmp_path):
    """`train --candidate-share F`: that share of samples are the site's own candidates; the other sources
    keep their default proportions."""
    from contourqa.qa_models.crop import InputSpec
    from contourqa.training.cache import load_case
    from contourqa.training.samples import SOURCES, SampleGenerator, source_shares

    shares = source_shares(0.6)
    assert shares["candidate"] == 0.6 and sum(shares.values()) == pytest.approx(1)
    assert shares["perturbed"] / shares["failure"] == pytest.approx(SOURCES["perturbed"] / SOURCES["failure"])
    assert source_shares() == SOURCES

    rows = read_manifest(phantom / "manifest.csv")
    case = load_case([r for r in rows if r.case_id == rows[0].case_id], tmp_path)

    def sources(share):
        generator = SampleGenerator([case], InputSpec(shape=(8, 16, 16)), np.random.default_rng(3), augment=False,
                                    candidate_share=share)
        return [generator.candidate_mask(case, roi)[2] for roi in sorted(case.references) for _ in range(20)]

    assert set(sources(1.0)) == {"candidate"}
    assert "candidate" not in sources(0.0) and len(set(sources(0.0))) > 3
