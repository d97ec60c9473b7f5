"""The edge picker (``edge_picker``) as a Dice predictor: a model folder whose card names the architecture
``edge_picker`` and whose ``weights.pt`` holds the picker's weights.

Its guard is its own spread: how far its distributions reach round the edge it picks. The limit is the
quantile over held-out studies of its training style that the card records (99 % since version 3; the
``quantile`` of its domain), set as a network's domain guard threshold is; beyond it the image does not
show the picker one edge (a style it does not know, a boundary that does not show), and the number is
withheld. A contour moved far off its organ is left to the screens (``says_off_organ``); one with no
surface to read (``readable_surface``) gets no number, and its image is not judged. The card's
body parts are checked as a network's are. The 5-95 % interval is split conformal: the estimate plus or
minus the 90 % quantile of the absolute error on those held-out studies where the picker was sure, the
ROI's own where the card has it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from .domain import DomainGuard, DomainScore, normalise_body_part
from .edge_picker import (FEATURES, EdgePicker, PickedEdge, Picker, PickerEnsemble, PickersByRoi, picked_edge_of,
                          picker_for_roi)
from .edge_surface import ContourSurface, contour_surface
from .errors import InputError
from .geometry import Grid
from .predictor import CardPredictor, ModelCard, Prediction, identify, load_weights, read_card

SPREAD_MEASURE = "edge spread"
RETRAIN = "contourqa picker --manifest SITE.csv --held SITE_HELD.csv"
# a mask with more voxel faces on its boundary than this is too fragmented to be an organ's (a noise
# mask: 4.5 million vertices, 13 s for its mesh alone); a pelvic organ has some ten thousand
MAX_BOUNDARY_FACES = 400_000
# a surface the image's own ends cut for the most part (an all-ones mask) leaves too little to read
MIN_MEASURED_SHARE = 0.5
EMPTY_MASK = PickedEdge(0.0, 0.0, None)  # what an empty mask reads: no surface, so a Dice of 0 and no spread


class PickerPredictor(CardPredictor):
    def __init__(self, card: ModelCard, network: Picker | PickersByRoi, guard: DomainGuard | None = None):
        self.card, self.network, self.guard = card, network, guard

    def network_for(self, roi_name: str | None) -> Picker:
        return picker_for_roi(self.network, roi_name)

    def spread_limit(self, roi_name: str | None) -> float:
        return self.card.spread_limit_by_roi.get((roi_name or "").lower(), self.card.domain.threshold)

    @classmethod
    def from_model_folder(cls, model_dir: str | Path) -> "PickerPredictor":
        model_dir = Path(model_dir)
        card = read_card(model_dir)
        network = _picker_for(load_weights(model_dir, torch.device("cpu")), model_dir)
        if card.domain is None:
            raise InputError(f"{model_dir}: an edge picker without a spread limit (train it with --held)")
        identify(card, model_dir)
        guard = DomainGuard.load(model_dir, card.feature_guard) if card.feature_guard else None
        return cls(card, network.eval(), guard)

    def predict_rois(self, image: np.ndarray, grid: Grid, masks: Sequence[np.ndarray], roi_names: Sequence[str | None],
                     probabilities: Sequence[np.ndarray | None] | None = None, mc_samples: int = 0,
                     body_part: str | None = None, extra_body_parts: Sequence[str] = ()) -> list[Prediction]:
        """As ``CardPredictor.predict_rois``; the picker reads the binary mask (a FRACTIONAL segment's
        probabilities and ``mc_samples`` do not apply)."""
        known = self.known_body_parts(extra_body_parts)
        part = normalise_body_part(body_part)
        spacing = np.asarray(grid.spacing[::-1], dtype=float)
        predictions = []
        for mask, roi_name in zip(masks, roi_names):
            surface, unreadable = readable_surface(image, mask, spacing)
            if unreadable is not None:  # nothing was read, so the image is not judged either
                predictions.append(Prediction(0.0, 0.0, 0.0, unreadable=unreadable))
                continue
            # an empty mask scores 0 against any reference, surely
            picked = EMPTY_MASK if surface is None else picked_edge_of(self.network_for(roi_name), surface)
            half = self.card.interval_half_width_by_roi.get((roi_name or "").lower(), self.card.interval_half_width or 0.0)
            score = DomainScore(picked.spread_mm, self.spread_limit(roi_name), part, known, SPREAD_MEASURE, " mm",
                                RETRAIN, **self._feature_distance(picked.features, roi_name))
            dice = picked.dice
            predictions.append(Prediction(dice, max(dice - half, 0.0), min(dice + half, 1.0), score))
        return predictions

    def _feature_distance(self, features: np.ndarray | None, roi_name: str | None) -> dict[str, float]:
        """The feature guard's distance and threshold as ``DomainScore`` takes them; none where the card has
        no feature guard or nothing was read."""
        if self.guard is None or features is None:
            return {}
        return {"feature_distance": float(self.guard.distances(features[None], [roi_name])[0]),
                "feature_threshold": self.card.feature_guard.threshold}


def _picker_for(weights: object, model_dir: Path) -> Picker | PickersByRoi:
    """The picker the weights are of: one (``0.weight``, as versions 1 and 2 were saved), an ensemble
    (``0.0.weight``, ``1.0.weight``, ...) or one of those per organ kind (``default.0.0.weight``,
    ``rectum.0.0.weight``, ...), refused in one line where they are not a picker of this contourqa's."""
    keys = list(weights) if isinstance(weights, dict) else []
    if not keys:
        raise InputError(f"{model_dir}: weights do not match the edge picker (weights.pt holds no weights by name)")
    if not keys[0].split(".")[0].isdigit():
        groups: dict[str, dict] = {}
        for key, value in weights.items():
            group, _, rest = key.partition(".")
            groups.setdefault(group, {})[rest] = value
        if PickersByRoi.DEFAULT not in groups:
            raise InputError(f"{model_dir}: weights do not match the edge picker (no {PickersByRoi.DEFAULT!r} picker "
                             f"among {', '.join(sorted(groups))})")
        return PickersByRoi({group: _picker_for(part, model_dir) for group, part in groups.items()})
    single = "0.weight" in keys
    first = weights.get("0.weight" if single else "0.0.weight")
    if isinstance(first, torch.Tensor) and first.ndim == 2 and first.shape[1] != FEATURES:
        # an earlier contourqa's picker read fewer inputs per vertex
        raise InputError(f"{model_dir}: weights do not match the edge picker of this contourqa ({first.shape[1]} "
                         f"inputs per vertex, not {FEATURES}): train it again with contourqa picker")
    members = {key.split(".")[0] for key in keys}
    network = EdgePicker() if single else PickerEnsemble(EdgePicker() for _ in members)
    try:
        network.load_state_dict(weights)
    except (RuntimeError, TypeError, AttributeError) as error:
        raise InputError(f"{model_dir}: weights do not match the edge picker "
                         f"({str(error).strip().splitlines()[0]})") from None
    return network


def readable_surface(image: np.ndarray, mask: np.ndarray,
                     spacing: np.ndarray) -> tuple[ContourSurface | None, str | None]:
    """The contour's surface, or why the picker can read none: (surface, None), (None, why), or (None, None)
    for an empty mask. The cheap checks come first: meshing noise would take a minute."""
    if not mask.any():
        return None, None
    faces = boundary_faces(mask)
    if faces == 0:
        return None, "the contour fills the whole image"
    if faces > MAX_BOUNDARY_FACES:
        return None, f"{faces} voxel faces on its boundary, too fragmented to be an organ's"
    surface = contour_surface(image, mask, spacing)
    if surface is None or np.sum(surface.area * surface.measured) < MIN_MEASURED_SHARE * np.sum(surface.area):
        return None, "no surface inside the image to read: lone voxels, or a surface mostly on the image's ends"
    return surface, None


def boundary_faces(mask: np.ndarray) -> int:
    """Voxel faces between the mask and its outside, the array's own ends not counted."""
    return sum(int(np.count_nonzero(np.diff(mask, axis=axis))) for axis in range(mask.ndim))
