"""The edge picker on spheres whose true Dice is known: its geometry, its targets, its inputs' invariance,
that what it learns on one contrast holds on another, and the model folder the product loads."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.spatial import cKDTree

from contourqa.qa_models.edge_picker import (EdgePicker, PickerEnsemble, PickersByRoi, moved_surface_dice,
                                             picked_edge, vertex_features)
from contourqa.qa_models.edge_surface import contour_surface
from contourqa.qa_models.domain import DomainGuard
from contourqa.qa_models.errors import InputError
from contourqa.qa_models.geometry import Grid
from contourqa.qa_models.picker_predictor import PickerPredictor
from contourqa.qa_models.predictor import DicePredictor, load_predictor
from contourqa.reporting.overlap import dice
from contourqa.training.cache import CachedCase, Candidate
from contourqa.training.edge_picker import (MIN_PER_ROI, held_out_figures, scaled_about_centre, signed_distance,
                                           train_pickers, training_vertices, true_offsets, write_picker_model)
from contourqa.training.manifest import ManifestRow

SPACING = np.array([3.0, 1.0, 1.0])  # slices of 3 mm, pixels of 1 mm
SHAPE = (24, 80, 80)


def _radius_mm(centre: tuple[float, float, float]) -> np.ndarray:
    k, j, i = np.indices(SHAPE)
    return np.sqrt(((k - centre[0]) * SPACING[0]) ** 2 + ((j - centre[1]) * SPACING[1]) ** 2
                   + ((i - centre[2]) * SPACING[2]) ** 2)


RADIUS = _radius_mm((12, 40, 40))
REFERENCE = RADIUS < 18


def _organ(contrast: float, noise: float, seed: int) -> np.ndarray:
    return contrast * REFERENCE + np.random.default_rng(seed).normal(0, noise, SHAPE)


def _candidates() -> dict[str, np.ndarray]:
    return {f"radius {r} mm": RADIUS < r for r in (13, 15.5, 18, 20.5, 23)} | {
        "shifted 4 mm": _radius_mm((12, 44, 40)) < 18}


def test_the_moved_surface_is_counted_voxel_by_voxel_as_the_true_dice_is():
    surface = contour_surface(_organ(100, 5, 0), REFERENCE, SPACING)
    offsets = np.ones(len(surface.verts))
    assert moved_surface_dice(surface, 0 * offsets) == 1.0
    true = {moved: dice(REFERENCE, RADIUS < 18 + moved) for moved in (-3, 3)}
    estimate = {moved: moved_surface_dice(surface, moved * offsets) for moved in (-3, 3)}
    # the surface moved 3 mm in or out is the sphere of radius 15 or 21, within what distances to the
    # vertices of a voxel staircase cost (0.03 on a sphere this small with 3 mm slices)
    assert estimate == pytest.approx(true, abs=0.035)
    assert (estimate[-3] < estimate[3]) == (true[-3] < true[3])  # in is in, out is out


def _moved_everywhere(surface, offsets: np.ndarray) -> float:
    """moved_surface_dice's rule on every voxel of the crop, each with its nearest vertex, no band, no bound."""
    index = np.indices(surface.mask.shape).reshape(3, -1).T
    distance, nearest = cKDTree(surface.verts).query(index * surface.spacing)
    inside = surface.mask.ravel()
    moved = np.where(inside, -distance, distance) < offsets[nearest]
    return dice(moved.reshape(surface.mask.shape), surface.mask)


@pytest.mark.parametrize("pattern", ["mixed", "outward only", "inward only", "one far vertex", "none"])
def test_the_bounded_search_counts_every_voxel_as_a_search_of_the_whole_crop_does(pattern):
    # the band and the nearest-vertex search stop at each side's farthest move: a voxel left out by that
    # bound must be one that no vertex's move could reach
    surface = contour_surface(_organ(100, 5, 0), REFERENCE, SPACING)
    rng = np.random.default_rng(3)
    wave = 4 * np.sin(surface.verts[:, 1] / 7) + rng.normal(0, 0.5, len(surface.verts))
    offsets = {"mixed": wave, "outward only": np.abs(wave), "inward only": -np.abs(wave),
               "one far vertex": np.where(np.arange(len(wave)) == 7, 8.0, 0.2 * np.abs(wave)),
               "none": 0 * wave}[pattern]
    assert moved_surface_dice(surface, offsets) == pytest.approx(_moved_everywhere(surface, offsets), abs=2e-4)


def test_the_training_target_is_how_far_each_vertex_lies_from_the_reference():
    surface = contour_surface(_organ(100, 5, 0), RADIUS < 22, SPACING)
    offsets = true_offsets(surface, signed_distance(REFERENCE, SPACING))
    assert np.median(offsets) == pytest.approx(-4, abs=0.6)  # the reference lies 4 mm inwards
    assert np.percentile(np.abs(offsets + 4), 90) < 1.5


def test_its_inputs_keep_neither_grey_values_nor_the_sign_of_the_contrast():
    image = _organ(100, 5, 0)
    for mask in (RADIUS < 15, RADIUS < 21):
        plain = vertex_features(contour_surface(image, mask, SPACING))
        inverted = vertex_features(contour_surface(5000 - 7 * image, mask, SPACING))
        assert plain.shape[1] == 8 * 33 and np.allclose(plain, inverted, atol=1e-3)


def test_a_walled_organs_inner_and_outer_surfaces_are_each_read_by_their_own_contrast():
    """A wall (grey 200) round a dark lumen (20) in brighter tissue (300), as a rectum's: one contrast for
    the whole contour reads one of its two surfaces the wrong way round; the local reading neither."""
    wall = (RADIUS >= 9) & (RADIUS < 18)
    image = np.where(RADIUS < 9, 20.0, np.where(wall, 200.0, 300.0))
    surface = contour_surface(image, wall, SPACING)
    edge = vertex_features(surface)[surface.measured][:, [16, 2 * 33 + 16]]  # the derivative at the contour
    inner = (np.linalg.norm(surface.verts + surface.start * SPACING - [36, 40, 40], axis=1) < 13.5)[surface.measured]
    assert inner.any() and (~inner).any()
    by_contour, by_vertex = edge[:, 0] > 0, edge[:, 1] > 0  # positive: read as the organ's edge
    assert by_contour[inner].mean() < 0.1 < 0.9 < by_contour[~inner].mean()  # the lumen's edge read backwards
    assert by_vertex.mean() > 0.95


GRID = Grid(np.zeros(3), SPACING[::-1].copy(), np.eye(3), SHAPE)


def _case(image: np.ndarray, name: str) -> CachedCase:
    grid = GRID
    rows = [ManifestRow(name, None, None, None, "Organ", kind) for kind in _candidates()]
    candidates = [Candidate(row, mask, dice(mask, REFERENCE)) for row, mask in zip(rows, _candidates().values())]
    return CachedCase(name, image, grid, "MR", {"organ": REFERENCE}, candidates)


def test_proportional_training_contours_are_the_reference_scaled_with_their_true_offsets():
    """A sphere of radius 18 mm scaled by 1.25 is one of 22.5 mm whose vertices lie 4.5 mm outside the
    reference; ``--proportional`` adds such contours, up and down, to the candidates' vertices."""
    grown = scaled_about_centre(REFERENCE, 1.25)
    agreement = {radius: dice(grown, RADIUS < radius) for radius in (21, 22.5, 24)}
    assert agreement[22.5] > 0.95 and agreement[22.5] == max(agreement.values())  # 3 mm slices: a staircase
    case = _case(_organ(100, 5, 0), "scaled")
    plain = training_vertices([case], per_candidate=50)[1]
    features, offsets, is_scaled = training_vertices([case], per_candidate=50, proportional=True)
    assert len(features) == len(offsets) == len(plain) + 2 * 25
    assert not is_scaled[:len(plain)].any() and is_scaled[len(plain):].all()
    assert np.array_equal(offsets[:len(plain)], plain)  # the candidates' vertices as without the option
    scaled = offsets[len(plain):]
    assert np.median(scaled[:25]) < -1 and np.median(scaled[25:]) > 1  # grown: the edge lies inwards


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """Two pickers trained on bright spheres of two contrasts, their spread limit and interval set on a
    third, written as a model folder as `contourqa picker --members 2` writes it."""
    cases = [_case(_organ(contrast, 8, seed), f"train{seed}") for seed, contrast in enumerate((60, 120))]
    features, offsets, _ = training_vertices(cases, per_candidate=600)
    network = train_pickers(features, offsets, members=2, epochs=15)
    folder = tmp_path_factory.mktemp("picker") / "model"
    write_picker_model(folder, network, [(Path("spheres.csv"), cases)], [(Path("held.csv"), [_case(_organ(90, 8, 2), "held")])],
                       len(offsets), 0, "spheres", "1", ["whole body"])
    return folder


@pytest.fixture(scope="module")
def model(model_dir) -> PickerPredictor:
    loaded = load_predictor(model_dir)
    assert isinstance(loaded, PickerPredictor)
    card = loaded.card
    assert (card.architecture, card.modalities, card.roi_names) == ("edge_picker", ["MR"], ["Organ"])
    assert 0 < card.domain.threshold < 8 and 0 < card.interval_half_width < 0.1
    assert card.domain.body_parts == ["WHOLE BODY"] and card.training_data["manifest"] == "spheres.csv"
    return loaded


@pytest.fixture(scope="module")
def picker(model):
    return model.network


def picker_dice(picker, image: np.ndarray, mask: np.ndarray, spacing: np.ndarray) -> float:
    return picked_edge(picker, image, mask, spacing).dice


def test_what_it_learned_holds_on_a_dark_organ_of_another_contrast(picker):
    image = 300 - _organ(40, 6, 7)  # dark inside, another contrast and noise than any it was trained on
    true = {name: dice(mask, REFERENCE) for name, mask in _candidates().items()}
    estimate = {name: picker_dice(picker, image, mask, SPACING) for name, mask in _candidates().items()}
    assert estimate["radius 18 mm"] > 0.97
    for name in true:
        assert estimate[name] == pytest.approx(true[name], abs=0.07), name  # the staircase of 3 mm slices
    assert sorted(true, key=true.get) == sorted(true, key=estimate.get)


def test_an_empty_mask_has_no_surface_to_pick_on_and_scores_zero_in_the_product(picker, model):
    assert np.isnan(picker_dice(picker, _organ(100, 5, 0), np.zeros(SHAPE, bool), SPACING))
    [empty] = model.predict_rois(_organ(100, 5, 0), GRID, [np.zeros(SHAPE, bool)], ["Organ"])
    assert (empty.dice, empty.trusted) == (0.0, True)  # against any reference, surely


@pytest.mark.parametrize("damage, reason", [
    ("no weights", "lacks weights.pt"),
    ("not a torch file", "refused or unreadable weights"),
    ("other weights", "weights do not match the edge picker"),
    ("an earlier version's weights", "132 inputs per vertex, not 264\\): train it again with contourqa picker"),
    ("no spread limit", "without a spread limit"),
])
def test_a_picker_folder_that_cannot_be_used_is_refused_in_one_line(model_dir, tmp_path, damage, reason):
    folder = tmp_path / "model"
    shutil.copytree(model_dir, folder)
    weights, card_file = folder / "weights.pt", folder / "model.json"
    if damage == "no weights":
        weights.unlink()
    elif damage == "not a torch file":
        weights.write_bytes(b"not a torch file")
    elif damage == "other weights":
        torch.save({"0.weight": torch.zeros(2, 264)}, weights)
    elif damage == "an earlier version's weights":  # before the local reading, four profiles per vertex
        torch.save({"0.weight": torch.zeros(128, 132)}, weights)
    else:
        card_file.write_text(json.dumps(json.loads(card_file.read_text()) | {"domain": None}))
    with pytest.raises(InputError, match=reason) as error:
        load_predictor(folder)
    assert "\n" not in str(error.value)


def test_an_ensemble_averages_its_members_distributions_and_one_member_alone_loads_as_a_single_picker(
        model_dir, model, tmp_path):
    ensemble = model.network
    assert isinstance(ensemble, PickerEnsemble) and len(ensemble) == 2 and model.card.training_data["members"] == 2
    surface = contour_surface(_organ(90, 6, 3), RADIUS < 20.5, SPACING)
    x = torch.from_numpy(vertex_features(surface))
    with torch.no_grad():
        averaged = torch.softmax(ensemble(x), dim=1)
        members = [torch.softmax(member(x), dim=1) for member in ensemble]
    assert torch.allclose(averaged, (members[0] + members[1]) / 2, atol=1e-6)
    assert not torch.allclose(members[0], members[1], atol=1e-3)  # two seeds, two pickers
    # one member saved alone, as pickers 1 and 2 were: it loads as one picker and gives its own number
    single = tmp_path / "single"
    shutil.copytree(model_dir, single)
    torch.save(ensemble[0].state_dict(), single / "weights.pt")
    loaded = load_predictor(single).network
    assert type(loaded) is EdgePicker
    image = _organ(90, 6, 3)
    alone, first = (picked_edge(p, image, RADIUS < 20.5, SPACING) for p in (loaded, ensemble[0]))
    assert (alone.dice, alone.spread_mm) == (first.dice, first.spread_mm)


def test_the_feature_guard_withholds_on_an_organ_unlike_any_it_was_trained_on_where_the_spread_is_sure(model,
                                                                                                           model_dir):
    """Trained on solid spheres, the pickers read a hollow one (its wall alone) surely, its spread within
    the limit, but their pooled features lie beyond the feature guard's threshold (set on held-out
    spheres): the number is withheld and the reason names the features. Solid spheres of other contrasts
    and noise than the training ones lie inside."""
    card = model.card
    assert card.feature_guard.threshold > 0 and (model_dir / "domain.npz").exists()
    for contrast, seed in ((70, 21), (110, 23)):
        [solid] = model.predict_rois(_organ(contrast, 8, seed), GRID, [REFERENCE], ["Organ"])
        assert solid.trusted and solid.domain.feature_distance < card.feature_guard.threshold
    hollow = 80.0 * ((RADIUS < 18) & (RADIUS > 13)) + np.random.default_rng(31).normal(0, 8, SHAPE)
    [wall] = model.predict_rois(hollow, GRID, [REFERENCE], ["Organ"])
    assert wall.domain.score <= wall.domain.threshold  # the spread alone would have given the number
    assert not wall.trusted and wall.domain.feature_distance > 1.2 * card.feature_guard.threshold
    assert "picker feature distance" in wall.domain.warning()
    shown = wall.domain.as_dict()
    assert shown["inside"] is False and shown["feature_distance"] > shown["feature_threshold"]


def test_a_roi_with_a_picker_of_its_own_reads_with_it_and_is_judged_by_its_own_spread_limit(model, tmp_path):
    """As a rectum reads with pickers trained without the scaled references: here the sphere's ROI reads
    with one member alone, any other ROI with the two."""
    ensemble = model.network
    by_roi = PickersByRoi({PickersByRoi.DEFAULT: ensemble, "organ": ensemble[0]})
    held = [_case(_organ(90, 8, 2), "held")]
    card = write_picker_model(tmp_path / "model", by_roi, [(Path("spheres.csv"), held)], [(Path("held.csv"), held)],
                              1, 0, "spheres", "1")
    assert set(card.spread_limit_by_roi) == {"organ"}
    loaded = load_predictor(tmp_path / "model")
    assert type(loaded.network_for("Organ")) is EdgePicker and loaded.network_for("Bladder") is loaded.network_for(None)
    image, mask = _organ(90, 6, 3), RADIUS < 20.5
    [own] = loaded.predict_rois(image, GRID, [mask], ["Organ"])
    [shared] = loaded.predict_rois(image, GRID, [mask], ["Bladder"])
    assert own.dice == picked_edge(ensemble[0], image, mask, SPACING).dice
    assert shared.dice == picked_edge(ensemble, image, mask, SPACING).dice != own.dice
    assert own.domain.threshold == card.spread_limit_by_roi["organ"] and shared.domain.threshold == card.domain.threshold


def test_commands_that_need_a_network_refuse_a_picker_folder(model_dir):
    with pytest.raises(InputError, match="an edge_picker model, not a network"):
        DicePredictor.from_model_folder(model_dir)


def test_a_contour_cut_by_the_images_last_slice_is_not_taken_for_an_error(picker):
    """The image ends inside the organ: a reference drawn on it ends there too, and no edge can show there."""
    cut = slice(0, 13)  # the sphere's centre is on slice 12: the last slice of this image halves it
    image = _organ(90, 6, 5)[cut]
    assert REFERENCE[cut][-1].any()
    assert picker_dice(picker, image, REFERENCE[cut], SPACING) > 0.97
    larger = (RADIUS < 20.5)[cut]
    assert picker_dice(picker, image, larger, SPACING) == pytest.approx(dice(larger, REFERENCE[cut]), abs=0.07)


def test_it_is_sure_where_the_image_shows_the_boundary_and_withholds_where_it_does_not(model):
    noise_only = np.random.default_rng(1).normal(0, 5, SHAPE)  # the same contours, no organ to see
    masks = [RADIUS < 15.5, REFERENCE, RADIUS < 20.5]
    shown = model.predict_rois(_organ(70, 6, 4), GRID, masks, ["Organ"] * 3, body_part="Whole Body ")
    hidden = model.predict_rois(noise_only, GRID, masks, ["Organ"] * 3)
    for seen, unseen in zip(shown, hidden):
        assert seen.trusted and not unseen.trusted
        assert unseen.domain.score > 1.5 * seen.domain.score
        assert seen.low <= seen.dice <= seen.high and seen.high - seen.low > 0  # the held-out interval
    assert unseen.domain.reason().startswith("edge spread ") and " mm > " in unseen.domain.reason()
    [elsewhere] = model.predict_rois(_organ(70, 6, 4), GRID, [REFERENCE], ["Organ"], body_part="HEAD")
    assert not elsewhere.trusted and "body part HEAD, not WHOLE BODY" in elsewhere.domain.reason()


def test_held_out_studies_set_the_spread_limit_and_the_interval_overall_and_per_roi(picker):
    few = held_out_figures(picker, [[_case(_organ(90, 8, 2), "held")]])  # 6 candidates: too few for their own
    assert few.candidates == 6 and few.half_width_by_roi == {} and 0 < few.half_width < 0.1
    cases = [_case(_organ(90, 8, seed), f"held{seed}") for seed in range(10, 10 + -(-MIN_PER_ROI // 6))]
    enough = held_out_figures(picker, [cases])
    assert set(enough.half_width_by_roi) == {"organ"}
    assert enough.half_width_by_roi["organ"] == pytest.approx(enough.half_width, abs=1e-4)  # one ROI: the same
    assert enough.spread_limit > 0


def _spreads(picker, cases: list) -> np.ndarray:
    return np.array([picked_edge(picker, case.image, candidate.mask, SPACING).spread_mm
                     for case in cases for candidate in case.candidates])


def test_held_out_styles_each_stay_inside_the_limits_set_on_them_together(picker, tmp_path):
    """A picker trained on two styles is held out on both: its limits are the larger style's own, where the
    quantile of the pooled sets would let the sharper style pull them below what the fainter one needs."""
    sharp = [_case(_organ(120, 2, seed), f"sharp{seed}") for seed in (20, 21)]
    faint = [_case(_organ(40, 14, seed), f"faint{seed}") for seed in (22, 23)]
    sharp_spreads, faint_spreads = _spreads(picker, sharp), _spreads(picker, faint)
    assert np.median(faint_spreads) > np.median(sharp_spreads)  # the styles differ as the test needs
    both = held_out_figures(picker, [sharp, faint])
    assert both.spread_limit == pytest.approx(np.quantile(faint_spreads, 0.99))
    assert both.spread_limit > np.quantile(np.concatenate([sharp_spreads, faint_spreads]), 0.99)
    assert both.candidates == 24 and both.sets.tolist() == [0] * 12 + [1] * 12
    card = write_picker_model(tmp_path / "model", picker, [(Path("spheres.csv"), sharp)],
                              [(Path("a/sharp.csv"), sharp), (Path("b/faint.csv"), faint)], 1, 0, "spheres", "1")
    assert card.domain.threshold_from == {"manifest": "a/sharp.csv, b/faint.csv", "cases": 4, "candidates": 24}
    assert card.domain.threshold == round(both.spread_limit, 2)
    guard = DomainGuard.load(tmp_path / "model", card.feature_guard)
    distances = [guard.distances(held_out_figures(picker, [cases]).features, ["organ"] * 12)
                 for cases in (sharp, faint)]
    assert card.feature_guard.threshold == round(max(np.quantile(d, 0.99) for d in distances), 2)


def test_masks_it_cannot_read_get_no_number_and_cost_no_mesh(model, monkeypatch):
    """All ones (its surface the image's own ends) and noise (too fragmented to be an organ's): withheld,
    not a confident 1.0 or a minute of meshing."""
    import contourqa.qa_models.picker_predictor as picker_predictor

    noise = np.random.default_rng(3).random(SHAPE) < 0.5
    monkeypatch.setattr(picker_predictor, "contour_surface", lambda *a: pytest.fail("meshed a mask it cannot read"))
    # a noise mask on a clinical series has millions of boundary faces; on this small array 230,000
    monkeypatch.setattr(picker_predictor, "MAX_BOUNDARY_FACES", 100_000)
    for mask, why in ((np.ones(SHAPE, bool), "fills the whole image"), (noise, "too fragmented")):
        [prediction] = model.predict_rois(_organ(70, 6, 4), GRID, [mask], ["Organ"])
        # the contour is what cannot be read, so the image is not judged (nor called outside the domain)
        assert not prediction.trusted and why in prediction.unreadable and prediction.domain is None
    monkeypatch.undo()
    mostly_cut = np.zeros(SHAPE, bool)
    mostly_cut[:, 2:78, 2:78] = True  # every slice: only its in-plane rim lies inside the image
    [prediction] = model.predict_rois(_organ(70, 6, 4), GRID, [mostly_cut], ["Organ"])
    assert not prediction.trusted
    all_but_one_side = np.ones(SHAPE, bool)
    all_but_one_side[:, :, 78:] = False  # one face inside the image, five on its ends
    [prediction] = model.predict_rois(_organ(70, 6, 4), GRID, [all_but_one_side], ["Organ"])
    assert not prediction.trusted and "image's ends" in prediction.unreadable
    [readable] = model.predict_rois(_organ(70, 6, 4), GRID, [REFERENCE], ["Organ"])
    assert readable.unreadable is None and readable.domain is not None
