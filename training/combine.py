"""`contourqa combine`: several trained models of one architecture into one ensemble model folder.

Members may see the crop at different resolutions (``--input-shape`` of their training): the coarse view
and the fine one err differently, so their mean errs less than either, where members of one
resolution fine-tuned from each other do not. Each keeps its own input shape (``member_shapes``).
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import torch

from contourqa.qa_models.atomic import atomic_path
from contourqa import __version__
from contourqa.qa_models.errors import InputError
from contourqa.qa_models.predictor import CARD_FILE, WEIGHTS_FILE, DicePredictor, ModelCard, write_card


def _same(cards: list[ModelCard], what: str, value) -> None:
    values = [value(card) for card in cards]
    if any(v != values[0] for v in values[1:]):
        raise InputError(f"cannot combine models of different {what}: {', '.join(map(str, values))}")


def combine_models(model_dirs: list[Path], out_dir: Path, name: str | None = None,
                   version: str | None = None, test_time_flip: bool = False) -> ModelCard:
    """Write an ensemble of ``model_dirs`` (in that order; the first member's card gives the defaults)
    to ``out_dir`` and return its card. Members must agree on everything but their input shape.
    ``test_time_flip`` turns on the averaging with the mirrored input for the ensemble."""
    if len(model_dirs) < 2:
        raise InputError("combine needs at least two model folders")
    if (out_dir / CARD_FILE).exists():
        raise InputError(f"{out_dir} already holds a model; choose another --out")
    predictors = [DicePredictor.from_model_folder(d, device="cpu") for d in model_dirs]
    cards = [p.card for p in predictors]
    _same(cards, "architecture", lambda c: c.architecture)
    _same(cards, "input (apart from shape)", lambda c: c.input.model_copy(update={"shape": (8, 8, 8)}))
    _same(cards, "modalities", lambda c: sorted(m.upper() for m in c.modalities))
    _same(cards, "ROI names", lambda c: sorted(n.lower() for n in c.roi_names))
    _same(cards, "test-time flip", lambda c: c.test_time_flip)
    if any(card.calibration is not None for card in cards):
        raise InputError("cannot combine calibrated models: combine the uncalibrated ones, then calibrate the ensemble")

    first = cards[0]
    shapes = [spec.shape for p in predictors for spec in p.member_specs()]
    members = [{"name": c.name, "version": c.version, "sha256": c.sha256, "input_shape": list(c.input.shape),
                "networks": c.ensemble_size, "cases": c.training_data.get("cases"),
                "initialised_from": c.training_data.get("initialised_from"), "training_command": c.training_command}
               for c in cards]
    card = first.model_copy(deep=True, update={
        "name": name or first.name, "version": version or first.version, "contourqa_version": __version__,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "ensemble_size": len(shapes), "member_shapes": shapes if len(set(shapes)) > 1 else [],
        "training_data": {**first.training_data, "initialised_from": None, "members": members},
        "cross_validation": {}, "evaluation": {}, "training_command": "",
        "test_time_flip": first.test_time_flip or test_time_flip,
    })
    out_dir.mkdir(parents=True, exist_ok=True)
    states = [network.state_dict() for p in predictors for network in p.networks]
    with atomic_path(out_dir / WEIGHTS_FILE) as partial:
        torch.save(states, partial)  # the card last: a folder with a card is a whole model
    write_card(card, out_dir)
    return card
