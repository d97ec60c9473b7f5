"""A trained Dice predictor as a self-describing folder (``model.json`` card + ``weights.pt``), and the
predictors that load it: a 3-D network that reads a crop (``DicePredictor``), or the edge picker, which
reads the image along the contour's normals (``picker_predictor``); ``load_predictor`` picks by the card's
architecture. It knows nothing about training.
"""

from __future__ import annotations

import hashlib
import json
import logging
import pickle
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import torch
from pydantic import BaseModel, Field, ValidationError

from .atomic import write_text_atomically
from .crop import InputSpec, mask_input
from .domain import DOMAIN_FILE, DomainCard, DomainGuard, DomainScore, normalise_body_part
from .errors import InputError
from .geometry import Grid
from .networks import build_network

CARD_FILE, WEIGHTS_FILE = "model.json", "weights.pt"

log = logging.getLogger(__name__)


class Calibration(BaseModel):
    """A monotone map from the network's raw output to calibrated Dice, fitted on held-out candidates
    (isotonic regression, linear between its steps); it undoes the network's pull towards the mean."""

    raw: list[float] = Field(description="raw predictions, increasing")
    calibrated: list[float] = Field(description="calibrated Dice at each raw value, non-decreasing")
    candidates: int = 0
    manifest: str = ""
    fitted: str = ""

    def apply(self, values: np.ndarray) -> np.ndarray:
        return np.interp(values, self.raw, self.calibrated)


class ModelCard(BaseModel):
    """What a model is, what it was trained on, how well it did, and what it may be used for."""

    name: str
    version: str
    architecture: str
    input: InputSpec | None = Field(None, description="the crop a network reads; none for the edge picker, "
                                                      "which reads the image along the contour's normals")
    modalities: list[str] = Field(description="image modalities it is valid for")
    roi_names: list[str] = Field(description="ROI names (case-insensitive) it is valid for")
    contourqa_version: str
    created: str
    seed: int | None = None
    training_data: dict = Field(default_factory=dict)
    cross_validation: dict = Field(default_factory=dict)
    evaluation: dict = Field(default_factory=dict)
    training_command: str = ""
    ensemble_size: int = 1
    member_shapes: list[tuple[int, int, int]] = Field(
        default_factory=list, description="each ensemble member's input shape where members see the crop at "
        "different resolutions (a multi-scale ensemble, `contourqa combine`); empty: all take input.shape")
    test_time_flip: bool = Field(False, description="average each prediction with that of the left-right mirrored input")
    calibration: Calibration | None = None
    domain: DomainCard | None = Field(None, description="the domain guard; a network's arrays are in domain.npz")
    interval_half_width: float | None = Field(
        None, description="the edge picker's: its 5-95 % interval is the estimate +- this, the 90 % quantile of "
                          "its absolute error on held-out studies where it was sure (split conformal)")
    interval_half_width_by_roi: dict[str, float] = Field(
        default_factory=dict, description="the same per ROI (lower case), for the ROIs with enough held-out "
                                          "candidates: the picker errs more on some organs than on others")
    spread_limit_by_roi: dict[str, float] = Field(
        default_factory=dict, description="the edge picker's spread limit for each ROI (lower case) with a picker "
                                          "of its own; every other ROI's is domain.threshold")
    feature_guard: DomainCard | None = Field(
        None, description="the edge picker's second guard: Mahalanobis distance of its pooled hidden features from "
                          "its training contours' (arrays in domain.npz); beyond the threshold the image is outside")
    sha256: str | None = Field(None, description="digest of the weights, the guard's arrays and this card "
                                                 "(without this field): the model's identity")

    @property
    def input_shapes(self) -> list[tuple[int, int, int]]:
        """The input shape of each network in the weights, in order (none for the edge picker)."""
        if self.input is None:
            return []
        return list(self.member_shapes) or [self.input.shape] * self.ensemble_size


def device_for(name: str = "auto") -> torch.device:
    """``auto``: CUDA when present, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


NetworkInput = tuple[torch.Tensor, ...]  # one tensor per ensemble member (shared by members of one shape)


def with_mirror(x: torch.Tensor) -> torch.Tensor:
    """The batch ``x`` followed by its left-right mirror: test-time flip's two views. The mirrored input is
    in the training distribution (left-right flips are augmented)."""
    return torch.cat([x, x.flip(-1)])


@dataclass
class Prediction:
    dice: float
    low: float  # 5th percentile of the MC-dropout / ensemble samples
    high: float  # 95th percentile
    domain: DomainScore | None = None  # None: the model has no domain guard, or the contour gave it nothing to read
    unreadable: str | None = None  # why the model could read no surface in the contour (lone voxels, noise ...)

    @property
    def trusted(self) -> bool:
        """False when the contour could not be read or the input lies outside the model's training domain:
        the number must not be used."""
        return self.unreadable is None and (self.domain is None or self.domain.inside)


# the models shipped inside the package, by the name `--model` and worker.model_dir accept: the edge
# picker, trained on randomised synthetic images; the edge picker trained on three phantom styles
# (docs/model.md, "Version 4"); and the network v15, trained on the project's phantom
SHIPPED_MODELS = {"edge-picker": "picker_model", "edge-picker-three-styles": "picker_three_model",
                  "phantom-v15": "phantom_model"}
DEFAULT_MODEL = "edge-picker"


def shipped_model_dir(name: str) -> Path:
    return Path(str(resources.files("contourqa.qa_models") / SHIPPED_MODELS[name]))


def default_model_dir() -> Path:
    """The model shipped inside the package that is used when no other is configured."""
    return shipped_model_dir(DEFAULT_MODEL)


def model_folder(name: str | Path) -> Path:
    """A model folder by its path, or by the name of one shipped with contourqa (a folder of that name
    in the working directory comes first)."""
    path = Path(name)
    if not path.exists() and str(name) in SHIPPED_MODELS:
        return shipped_model_dir(str(name))
    return path


def read_card(model_dir: Path) -> ModelCard:
    path = Path(model_dir) / CARD_FILE
    try:
        return ModelCard.model_validate_json(path.read_text())
    except (FileNotFoundError, NotADirectoryError):
        raise InputError(f"{model_dir}: not a model folder (no {CARD_FILE})") from None
    except (ValidationError, json.JSONDecodeError) as error:
        raise InputError(f"{path}: invalid model card ({str(error).splitlines()[0]})") from None


LATER_FIELDS = ("interval_half_width", "interval_half_width_by_roi", "spread_limit_by_roi", "feature_guard")


def model_digest(card: ModelCard, model_dir: Path) -> str:
    """sha256 over the weights, the domain guard's arrays and the card without its own digest: two folders
    share it only when they predict alike, whatever their name and version say."""
    digest = hashlib.sha256()
    for name in (WEIGHTS_FILE, DOMAIN_FILE):
        path = Path(model_dir) / name
        if path.exists():
            digest.update(name.encode())
            digest.update(hashlib.sha256(path.read_bytes()).digest())
    # a field added after models were shipped counts only once set, so an older model keeps its identity
    unset = {name for name in LATER_FIELDS if getattr(card, name) in (None, {})}
    digest.update(card.model_copy(update={"sha256": None}).model_dump_json(exclude=unset).encode())
    return digest.hexdigest()


def write_card(card: ModelCard, model_dir: Path) -> None:
    """Replace the card atomically (a reader sees the old card or the new one, never half of one), its
    digest recorded. Write the weights and the guard first: the digest covers them."""
    path = Path(model_dir) / CARD_FILE
    card.sha256 = model_digest(card, model_dir)
    write_text_atomically(path, card.model_dump_json(indent=2))


PICKER_ARCHITECTURE = "edge_picker"


def load_predictor(model_dir: str | Path, device: str = "auto") -> "CardPredictor":
    """The predictor a model folder (or a shipped model's name) holds: the edge picker or a network, as
    its card says."""
    model_dir = model_folder(model_dir)
    if read_card(model_dir).architecture == PICKER_ARCHITECTURE:
        from .picker_predictor import PickerPredictor

        return PickerPredictor.from_model_folder(model_dir)
    return DicePredictor.from_model_folder(model_dir, device)


def load_weights(model_dir: Path, device: torch.device) -> object:
    """``weights.pt`` as tensors only (a model folder may come from elsewhere: never unpickle arbitrary
    objects); a one-line error for a missing or unreadable file."""
    try:
        return torch.load(model_dir / WEIGHTS_FILE, map_location=device, weights_only=True)
    except FileNotFoundError:
        raise InputError(f"{model_dir}: model folder lacks {WEIGHTS_FILE}") from None
    except (RuntimeError, ValueError, EOFError, pickle.UnpicklingError) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise InputError(f"{model_dir / WEIGHTS_FILE}: refused or unreadable weights ({reason})") from None


def identify(card: ModelCard, model_dir: Path) -> None:
    """Set the card's digest to that of what was loaded, warning when it differs from the recorded one."""
    digest = model_digest(card, model_dir)
    if card.sha256 is not None and card.sha256 != digest:
        log.warning("%s: weights or card changed after the card was written (sha256 %s, recorded %s)",
                    model_dir, digest[:12], card.sha256[:12])
    card.sha256 = digest  # the identity of what was loaded, not of what the card once described


class CardPredictor(ABC):
    """What every predictor shares: its card, what the card lets it be used for, and ``predict_rois``."""

    card: ModelCard

    def check_applicable(self, roi_name: str, modality: str) -> None:
        """Refuse a ROI or modality the model was not trained for: no silent wrong number."""
        if modality.upper() not in {m.upper() for m in self.card.modalities}:
            raise InputError(f"model {self.card.name} {self.card.version} is valid for {', '.join(self.card.modalities)} "
                             f"images, not {modality or 'unknown modality'}")
        if roi_name.lower() not in {n.lower() for n in self.card.roi_names}:
            raise InputError(f"model {self.card.name} {self.card.version} is not valid for ROI '{roi_name}' "
                             f"(valid: {', '.join(self.card.roi_names)})")

    def applies_to(self, roi_name: str, modality: str) -> bool:
        try:
            self.check_applicable(roi_name, modality)
        except InputError:
            return False
        return True

    def known_body_parts(self, extra: Sequence[str] = ()) -> tuple[str, ...]:
        """The body parts the guard accepts: its card's, with a site's own terms for them; none (so
        unchecked) where the card records none."""
        recorded = self.card.domain.body_parts if self.card.domain is not None else []
        if not recorded:
            return ()
        return tuple(dict.fromkeys(filter(None, map(normalise_body_part, [*recorded, *extra]))))

    @abstractmethod
    def predict_rois(self, image: np.ndarray, grid: Grid, masks: Sequence[np.ndarray], roi_names: Sequence[str | None],
                     probabilities: Sequence[np.ndarray | None] | None = None, mc_samples: int = 0,
                     body_part: str | None = None, extra_body_parts: Sequence[str] = ()) -> list[Prediction]:
        """The predicted Dice of each mask on ``image`` ([k, j, i] on ``grid``), with its interval and, where
        the model has a guard, its domain score."""


class DicePredictor(CardPredictor):
    """A 3-D network that predicts the Dice a mask would score against an expert reference, without the
    reference, from a crop of the image and the mask."""

    def __init__(self, card: ModelCard, networks: list[torch.nn.Module], device: torch.device,
                 guard: DomainGuard | None = None):
        self.card, self.networks, self.device, self.guard = card, networks, device, guard

    @classmethod
    def from_model_folder(cls, model_dir: str | Path, device: str = "auto") -> "DicePredictor":
        model_dir = Path(model_dir)
        card = read_card(model_dir)
        if card.input is None:
            raise InputError(f"{model_dir}: an {card.architecture} model, not a network this command can use")
        target = device_for(device)
        states = load_weights(model_dir, target)
        states = states if isinstance(states, list) else [states]
        if card.member_shapes and len(card.member_shapes) != len(states):
            raise InputError(f"{model_dir}: card lists {len(card.member_shapes)} member shapes for {len(states)} "
                             "networks in its weights")
        networks = []
        for state in states:
            network = build_network(card.architecture, len(card.input.channels))
            try:
                network.load_state_dict(state)
            except RuntimeError as error:
                raise InputError(f"{model_dir}: weights do not match architecture {card.architecture} "
                                 f"({str(error).splitlines()[0]})") from None
            networks.append(network.to(target).eval())
        guard = DomainGuard.load(model_dir, card.domain) if card.domain is not None else None
        identify(card, model_dir)
        return cls(card, networks, target, guard)

    def predict_rois(self, image: np.ndarray, grid: Grid, masks: Sequence[np.ndarray], roi_names: Sequence[str | None],
                     probabilities: Sequence[np.ndarray | None] | None = None, mc_samples: int = 0,
                     body_part: str | None = None, extra_body_parts: Sequence[str] = ()) -> list[Prediction]:
        probabilities = probabilities or [None] * len(masks)
        inputs = [self.network_input(image, mask, grid, p) for mask, p in zip(masks, probabilities)]
        return self.predict_batch(inputs, mc_samples, list(roi_names), body_part, extra_body_parts)

    def member_specs(self) -> list[InputSpec]:
        shapes = self.card.member_shapes or [self.card.input.shape] * len(self.networks)
        return [self.card.input.model_copy(update={"shape": tuple(shape)}) for shape in shapes]

    def network_input(self, image: np.ndarray, mask: np.ndarray, grid: Grid,
                      probabilities: np.ndarray | None = None) -> NetworkInput:
        """Each member's input; members of one shape share a tensor, so a fold ensemble crops once."""
        specs = self.member_specs()
        by_shape = {spec.shape: spec for spec in specs}
        crops = {shape: mask_input(image, mask, grid, spec, probabilities) for shape, spec in by_shape.items()}
        return tuple(crops[spec.shape] for spec in specs)

    def predict(self, image: np.ndarray, mask: np.ndarray, grid: Grid, mc_samples: int = 0,
                probabilities: np.ndarray | None = None, roi_name: str | None = None) -> Prediction:
        """Predicted Dice of ``mask`` on ``image`` ([k, j, i] on ``grid``), with a 5-95 % interval;
        ``probabilities`` of a FRACTIONAL segment feed a model's entropy channel."""
        return self.predict_batch([self.network_input(image, mask, grid, probabilities)], mc_samples, [roi_name])[0]

    def _encode(self, inputs: list[NetworkInput], views: int) -> tuple[list[torch.Tensor], np.ndarray]:
        """Each network's encoder output for the batch (followed by its mirror when ``views`` is 2), and the
        domain guard's feature vector of each input: every network's descriptor of the unmirrored input."""
        batches: dict[tuple[int, int, int], torch.Tensor] = {}  # one batch per input shape, shared by its members
        encoded, descriptors = [], []
        for member, (network, spec) in enumerate(zip(self.networks, self.member_specs())):
            if spec.shape not in batches:
                x = torch.stack([network_input[member] for network_input in inputs])
                x = with_mirror(x) if views == 2 else x
                batches[spec.shape] = x.to(self.device).contiguous(memory_format=torch.channels_last_3d)
            output, descriptor = network.encode_and_describe(batches[spec.shape])
            encoded.append(output)
            descriptors.append(descriptor[:len(inputs)])
        return encoded, torch.cat(descriptors, dim=1).float().cpu().numpy()

    @torch.no_grad()
    def features(self, inputs: list[NetworkInput]) -> np.ndarray:
        """Feature vectors (inputs x features) the domain guard is fitted on and scores."""
        return self._encode(inputs, views=1)[1]

    def _mc_draws(self, network: torch.nn.Module, features: torch.Tensor, mc_samples: int, seed: int) -> torch.Tensor:
        """``mc_samples`` dropout passes of the head over one ROI's encoded views, from the ROI's own seed
        (the global random state is left as it was)."""
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            torch.manual_seed(seed)
            return network.decode(features.repeat_interleave(mc_samples, dim=0)).reshape(-1, mc_samples)

    @torch.no_grad()
    def predict_batch(self, inputs: list[NetworkInput], mc_samples: int = 0,
                      roi_names: list[str | None] | None = None, body_part: str | None = None,
                      extra_body_parts: Sequence[str] = ()) -> list[Prediction]:
        """One forward pass per network for all ``inputs`` (all ROIs of a structure set: batched on a GPU).

        The interval comes from ``mc_samples`` Monte Carlo dropout passes per network and from the
        ensemble members; without either it collapses to the point estimate. With a domain guard each
        prediction carries its domain score (against the mean of its ROI in ``roi_names``) and, where the
        card records body parts, whether the image's ``body_part`` is one of them or of the site's
        ``extra_body_parts``.
        """
        if not inputs:
            return []
        batch = len(inputs)
        views = 2 if self.card.test_time_flip else 1
        # dropout sits only in the heads: the costly encoder runs once, the MC passes re-run the head
        encoded, features = self._encode(inputs, views)
        scores: list[DomainScore | None] = [None] * batch
        if self.guard is not None:
            distances = self.guard.distances(features, roi_names or [None] * batch)
            known = self.known_body_parts(extra_body_parts)
            scores = [DomainScore(float(d), self.card.domain.threshold, normalise_body_part(body_part), known)
                      for d in distances]
        points = torch.stack([n.decode(e) for n, e in zip(self.networks, encoded)]).reshape(-1, batch)  # (draws, batch)
        samples = [points]
        if mc_samples > 0:
            seeds = [content_seed(x) for x in inputs]
            for network, features in zip(self.networks, encoded):
                _dropout_on(network, True)
                draws = torch.stack([self._mc_draws(network, features[n::batch], mc_samples, seed)
                                     for n, seed in enumerate(seeds)], dim=1)  # (views, batch, mc_samples)
                samples.append(draws.permute(0, 2, 1).reshape(-1, batch))
                _dropout_on(network, False)
        values = torch.cat(samples).float().cpu().numpy()
        mean = points.mean(dim=0).float().cpu().numpy()
        if self.card.calibration is not None:  # monotone, so percentiles map onto percentiles
            values, mean = self.card.calibration.apply(values), self.card.calibration.apply(mean)
        # the point estimate is the dropout-free pass, which can lie just outside the draws' 5-95 % range
        # (with few draws, all of them above it): the interval reported always contains it
        low = np.minimum(np.percentile(values, 5, axis=0), mean)
        high = np.maximum(np.percentile(values, 95, axis=0), mean)
        return [Prediction(float(mean[n]), float(low[n]), float(high[n]), scores[n]) for n in range(batch)]


def content_seed(x: NetworkInput) -> int:
    """A seed from an input's own content: the same image and mask always draw the same dropout masks."""
    return int.from_bytes(hashlib.sha256(x[0].detach().cpu().numpy().tobytes()).digest()[:8], "little") >> 1


def _dropout_on(network: torch.nn.Module, active: bool) -> None:
    for module in network.modules():
        if isinstance(module, (torch.nn.Dropout, torch.nn.Dropout3d)):
            module.train(active)
