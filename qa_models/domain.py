"""The domain guard: is an input like the ones a model was trained on?

A network trained on one generator's images predicts confident nonsense on images it never saw (the
phantom-trained v15 gave an expert's contour on real prostate MR a Dice of 0.02). The guard measures,
in the network's own feature space, how far an input lies from its training inputs: the Mahalanobis
distance of the pooled encoder features to the mean of the inputs of the same ROI, under one covariance
shared by all ROIs (Lee et al., NeurIPS 2018). The threshold is a high quantile of the distances of
held-out in-domain studies. Beyond it the product withholds the number and says why.

Features of a crop around one ROI see style, not anatomy: a network trained on randomised contrast
found a thigh sarcoma's crop no further from its training inputs than a pelvis of another style
(docs/model.md). So the guard also reads the image's Body Part Examined: a model whose card records the
body parts it was fitted on withholds its number on an image that names another. An image that names
none is judged by its features alone.

The means and the precision matrix sit in ``domain.npz`` beside the weights; the card holds the rest.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydantic import BaseModel, Field

from .atomic import atomic_path
from .errors import InputError

DOMAIN_FILE = "domain.npz"
FEATURES = ("per network, unmirrored input: mean and standard deviation over space of the stem, the first stage "
            "and the encoder output (EfficientDet3D); of the first block, and the pooled encoding (RegNet3D)")
FEATURE_MEASURE = "picker feature distance"
OUTSIDE_WARNING = ("image outside the model's training domain ({reason}): "
                   "no Dice predicted; retrain on this site's data ({remedy})")


def normalise_body_part(value: object) -> str | None:
    """Body Part Examined as the guard compares it: upper case, without padding; None when empty."""
    text = str(value or "").strip().upper()
    return text or None


class DomainCard(BaseModel):
    """What the card says about its guard; the arrays are in ``DOMAIN_FILE``."""

    features: str = FEATURES
    roi_names: list[str] = Field(description="the class of each row of the means, lower case")
    threshold: float = Field(description="largest Mahalanobis distance still inside the domain")
    quantile: float = Field(description="quantile of the held-out distances the threshold was set at")
    fitted_on: dict = Field(default_factory=dict, description="manifest, cases and candidates of the means")
    threshold_from: dict = Field(default_factory=dict, description="held-out manifest the threshold came from")
    body_parts: list[str] = Field(default_factory=list,
                                  description="Body Part Examined of the images the guard was fitted on, upper case; "
                                              "an image naming another is outside; empty: not checked")


@dataclass(frozen=True)
class DomainScore:
    score: float
    threshold: float
    body_part: str | None = None  # the image's Body Part Examined, normalised
    known_body_parts: tuple[str, ...] = ()  # empty: the model records none, so none is checked
    measure: str = "domain score"  # what the score is: a Mahalanobis distance, or the edge picker's spread
    unit: str = ""
    remedy: str = "contourqa train --init-from ..."  # the command that retrains such a model on a site's studies
    # the edge picker's second guard, where its card has one: the Mahalanobis distance of its pooled
    # features from its training contours', and the limit set on held-out studies
    feature_distance: float | None = None
    feature_threshold: float | None = None

    @property
    def features_known(self) -> bool:
        return self.feature_distance is None or self.feature_distance <= self.feature_threshold

    @property
    def body_part_known(self) -> bool | None:
        """None when nothing can be said: the model records no body parts, or the image names none."""
        if not self.known_body_parts or self.body_part is None:
            return None
        return self.body_part in self.known_body_parts

    @property
    def inside(self) -> bool:
        return self.score <= self.threshold and self.features_known and self.body_part_known is not False

    def as_dict(self) -> dict:
        result = {"measure": self.measure, "score": round(self.score, 2), "threshold": round(self.threshold, 2),
                  "inside": self.inside}
        if self.feature_distance is not None:
            result.update(feature_distance=round(self.feature_distance, 2),
                          feature_threshold=round(self.feature_threshold, 2))
        if self.body_part_known is not None:
            result.update(body_part=self.body_part, body_part_known=self.body_part_known)
        return result

    def detail(self) -> str:
        """The score against its limit, in the guard's own terms, e.g. "edge spread 1.79 mm (limit 2.46 mm)"."""
        features = ("" if self.feature_distance is None else
                    f"; {FEATURE_MEASURE} {self.feature_distance:.1f} (limit {self.feature_threshold:.1f})")
        return f"{self.measure} {self.score:.2f}{self.unit} (limit {self.threshold:.2f}{self.unit}){features}"

    def reason(self) -> str:
        """Why the image is outside, e.g. "domain score 41.2 > 31.7; body part EXTREMITY, not PELVIS"."""
        reasons = []
        if self.score > self.threshold:
            reasons.append(f"{self.measure} {self.score:.2f}{self.unit} > {self.threshold:.2f}{self.unit}")
        if not self.features_known:
            reasons.append(f"{FEATURE_MEASURE} {self.feature_distance:.1f} > {self.feature_threshold:.1f}")
        if self.body_part_known is False:
            reasons.append(f"body part {self.body_part}, not {' or '.join(self.known_body_parts)}")
        return "; ".join(reasons)

    def warning(self) -> str:
        return OUTSIDE_WARNING.format(reason=self.reason(), remedy=self.remedy)


class DomainGuard:
    """Class means (one per ROI name) and a shared precision matrix over feature vectors."""

    def __init__(self, roi_names: list[str], means: np.ndarray, precision: np.ndarray):
        self.roi_names = [n.lower() for n in roi_names]
        self.means, self.precision = means.astype(np.float64), precision.astype(np.float64)

    @classmethod
    def fit(cls, features: np.ndarray, roi_names: list[str]) -> "DomainGuard":
        """Means per ROI and the Ledoit-Wolf shrunk covariance of the features about their ROI's mean."""
        from sklearn.covariance import LedoitWolf

        names = sorted({n.lower() for n in roi_names})
        labels = np.array([names.index(n.lower()) for n in roi_names])
        means = np.stack([features[labels == c].mean(axis=0) for c in range(len(names))])
        covariance = LedoitWolf().fit(features - means[labels]).covariance_
        return cls(names, means, np.linalg.inv(covariance))

    def distances(self, features: np.ndarray, roi_names: list[str | None]) -> np.ndarray:
        """Distance of each feature vector to its ROI's mean; to the nearest mean for a ROI named None or
        not among the guard's (the most lenient reading)."""
        centred = features[:, None, :].astype(np.float64) - self.means[None]  # (n, classes, F)
        squared = np.einsum("ncf,fg,ncg->nc", centred, self.precision, centred)
        squared = np.maximum(squared, 0)
        result = np.sqrt(squared.min(axis=1))
        for n, name in enumerate(roi_names):
            if name is not None and name.lower() in self.roi_names:
                result[n] = np.sqrt(squared[n, self.roi_names.index(name.lower())])
        return result

    def save(self, model_dir: Path) -> None:
        path = Path(model_dir) / DOMAIN_FILE
        with atomic_path(path) as temporary:
            np.savez(temporary, means=self.means, precision=self.precision)

    @classmethod
    def load(cls, model_dir: Path, card: DomainCard) -> "DomainGuard":
        path = Path(model_dir) / DOMAIN_FILE
        try:
            with np.load(path, allow_pickle=False) as data:
                means, precision = data["means"], data["precision"]
        except FileNotFoundError:
            raise InputError(f"{path}: the card names a domain guard but its file is missing") from None
        except (OSError, KeyError, ValueError) as error:
            raise InputError(f"{path}: the card names a domain guard but its file is unreadable ({error})") from None
        if means.shape[0] != len(card.roi_names) or precision.shape != (means.shape[1], means.shape[1]):
            raise InputError(f"{path}: shapes {means.shape} and {precision.shape} do not match the card's guard")
        return cls(card.roi_names, means, precision)
