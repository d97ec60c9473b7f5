"""`contourqa train`: fit a Dice regressor on a site's own manifest, with k-fold cross-validation by case.

Each fold trains on the other folds' cases; the folder it writes holds the fold models as an ensemble,
the model card with cross-validated metrics on the held-out cases, a checkpoint per epoch (resumable)
and the loss history.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import shlex
import sys
from pathlib import Path
from typing import Annotated

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, Field
from tqdm import tqdm

from contourqa.qa_models.atomic import atomic_path, write_text_atomically
from contourqa import __version__
from contourqa.qa_models.crop import InputSpec, mask_input
from contourqa.qa_models.errors import InputError
from contourqa.qa_models.networks import ARCHITECTURES, REFERENCE_ARCHITECTURES, build_network
from contourqa.qa_models.predictor import WEIGHTS_FILE, DicePredictor, ModelCard, device_for, with_mirror, write_card

from .cache import CachedCase, load_cases
from .manifest import ManifestRow, read_manifest
from contourqa.reporting.agreement import regression_metrics
from .samples import SampleGenerator

log = logging.getLogger(__name__)


class TrainConfig(BaseModel):
    architecture: str = "efficientdet3d"
    epochs: int = Field(30, ge=1)
    steps_per_epoch: int = Field(100, ge=1)
    batch_size: int = Field(8, ge=1)
    learning_rate: float = Field(2e-3, gt=0)
    lr_drop_fraction: float = Field(0.6, gt=0, le=1, description="share of epochs after which the rate drops tenfold")
    lr_drop_epochs: tuple[Annotated[int, Field(ge=1)], ...] = Field(
        (), description="epochs after each of which the rate drops tenfold; overrides lr_drop_fraction")
    loss: str = Field("mse", pattern="^(mse|huber)$")
    candidate_share: float | None = Field(None, ge=0, le=1, description=(
        "share of samples that are the manifest's own candidates (default 0.25); the other sources keep their proportions"))
    folds: int = Field(1, ge=1)
    test_time_flip: bool = Field(False, description="the model averages each prediction with the mirrored input's")
    seed: int = 0
    input: InputSpec = Field(default_factory=InputSpec)
    name: str = "contourqa-dice"
    version: str = "1"
    device: str = "auto"
    workers: int = Field(0, ge=0, description=(
        "processes drawing samples while the network trains (a GPU waits on one process's ~25 samples/s)"))

    @classmethod
    def quick(cls, **overrides) -> "TrainConfig":
        """A configuration that trains in a few minutes on two CPU cores, for tests and smoke runs."""
        settings = dict(architecture="regnet3d", epochs=3, steps_per_epoch=8, batch_size=4,
                        input=InputSpec(shape=(16, 32, 32)))
        settings.update(overrides)
        return cls(**settings)

    def learning_rate_at(self, epoch: int) -> float:
        """The rate of 0-based ``epoch``: a function of the configuration alone, so a resumed run (even
        one given more epochs or further drops) follows the schedule its command line states."""
        drops = self.lr_drop_epochs or (max(1, int(round(self.lr_drop_fraction * self.epochs))),)
        return self.learning_rate * 0.1 ** sum(epoch >= drop for drop in drops)


def _patient_of_row(row: ManifestRow) -> str:
    """Folds split by patient when the manifest has a patient_id column, else by case."""
    return row.clinical.get("patient_id") or row.case_id


def _patient_of(case: CachedCase) -> str:
    return _patient_of_row(case.candidates[0].row) if case.candidates else case.case_id


def _check_folds(rows: list[ManifestRow], folds: int) -> None:
    """Before any study is rasterised: a fold needs a patient of its own."""
    patients = {_patient_of_row(row) for row in rows}
    if folds > len(patients):
        raise InputError(f"--folds {folds} needs at least {folds} patients (cases); the manifest has {len(patients)}")


def _folds(cases: list[CachedCase], folds: int, seed: int) -> list[tuple[list[CachedCase], list[CachedCase]]]:
    if folds == 1:
        return [(cases, [])]
    patients = sorted({_patient_of(c) for c in cases})
    order = np.random.default_rng(seed).permutation(len(patients))
    groups = [{patients[n] for n in order[f::folds]} for f in range(folds)]
    return [([c for c in cases if _patient_of(c) not in group], [c for c in cases if _patient_of(c) in group])
            for group in groups]


@torch.no_grad()
def predict_candidates(network: torch.nn.Module, cases: list[CachedCase], spec: InputSpec,
                       device: torch.device, flip: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(true, predicted) Dice of every manifest candidate of ``cases``, without augmentation (but for the
    mirrored input's prediction averaged in when ``flip``, as the model will predict)."""
    network.eval()
    true, predicted = [], []
    for case in cases:
        for candidate in case.candidates:
            x = mask_input(case.image, candidate.mask, case.grid, spec, candidate.probabilities)[None]
            x = with_mirror(x) if flip else x
            predicted.append(float(network(x.to(device).contiguous(memory_format=torch.channels_last_3d)).mean()))
            true.append(candidate.dice)
    return np.array(true), np.array(predicted)


class _EpochBatches(torch.utils.data.IterableDataset):
    """One epoch's batches. In the main process they come from the seed of (seed, fold, epoch), as they
    always did; worker w of N draws every N-th batch from the seed of (seed, fold, epoch, w), so a run is
    reproducible for a given number of workers."""

    def __init__(self, cases: list[CachedCase], config: TrainConfig, fold: int, epoch: int):
        self.cases, self.config, self.fold, self.epoch = cases, config, fold, epoch

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        seed = [self.config.seed, self.fold, self.epoch] + ([info.id] if info else [])
        generator = SampleGenerator(self.cases, self.config.input, np.random.default_rng(seed),
                                    candidate_share=self.config.candidate_share,
                                    with_reference=self.config.architecture in REFERENCE_ARCHITECTURES)
        for _ in range(info.id if info else 0, self.config.steps_per_epoch, info.num_workers if info else 1):
            yield generator.batch(self.config.batch_size)


def _epoch_batches(cases: list[CachedCase], config: TrainConfig, fold: int, epoch: int):
    if not config.workers:
        return iter(_EpochBatches(cases, config, fold, epoch))
    # Workers inherit the cases by fork; one thread each, or they fight over the cores.
    return iter(torch.utils.data.DataLoader(_EpochBatches(cases, config, fold, epoch), batch_size=None,
                                            num_workers=config.workers,
                                            worker_init_fn=lambda _: torch.set_num_threads(1)))


def _initial_state(init_from: Path, config: TrainConfig) -> tuple[dict[str, torch.Tensor], str]:
    """(weights, "name version sha256:digest") of the first network of model folder ``init_from``, to fine-tune from; it
    must have the same architecture and input channels (the input shape may differ: the networks are
    fully convolutional)."""
    source = DicePredictor.from_model_folder(init_from, "cpu")
    if (source.card.architecture, source.card.input.channels) != (config.architecture, config.input.channels):
        raise InputError(f"--init-from {init_from}: model is {source.card.architecture} with channels "
                         f"{'+'.join(source.card.input.channels)}; this training is {config.architecture} with "
                         f"{'+'.join(config.input.channels)}")
    card = source.card
    return source.networks[0].state_dict(), f"{card.name} {card.version} sha256:{card.sha256}"


def _train_fold(fold: int, train_cases: list[CachedCase], config: TrainConfig, out_dir: Path, resume: bool,
                device: torch.device, initial_state: dict[str, torch.Tensor] | None) -> tuple[dict, list[dict]]:
    checkpoint_dir = out_dir / "checkpoints"
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(config.seed * 1000 + fold)
    network = build_network(config.architecture, len(config.input.channels))
    if initial_state is not None:
        network.load_state_dict(initial_state)
    network = network.to(device).to(memory_format=torch.channels_last_3d)  # 1.4-1.7x faster 3-D convolutions on CPU
    optimiser = torch.optim.Adam(network.parameters(), lr=config.learning_rate)
    loss_function = torch.nn.MSELoss() if config.loss == "mse" else torch.nn.HuberLoss(delta=0.1)
    history: list[dict] = []
    start = 0
    existing = sorted(checkpoint_dir.glob(f"fold{fold}-epoch*.pt"))
    if resume and existing:
        state = torch.load(existing[-1], map_location=device, weights_only=True)
        network.load_state_dict(state["network"])
        optimiser.load_state_dict(state["optimiser"])
        history = json.loads(state["history"])
        start = int(state["epoch"]) + 1
        log.info("fold %d: resuming after epoch %d", fold, start)
    for epoch in range(start, config.epochs):
        # Each epoch draws from its own seed, so a resumed run makes the same samples as an unbroken one.
        batches = _epoch_batches(train_cases, config, fold, epoch)
        torch.manual_seed(config.seed * 100003 + fold * 1009 + epoch)
        for group in optimiser.param_groups:
            group["lr"] = config.learning_rate_at(epoch)
        network.train()
        losses = []
        steps = tqdm(range(config.steps_per_epoch), desc=f"fold {fold} epoch {epoch + 1}/{config.epochs}",
                     file=sys.stderr, disable=None, leave=False)  # a bar on a terminal; else the epoch line below
        for _ in steps:
            inputs, targets, *references = next(batches)
            inputs = inputs.to(device).contiguous(memory_format=torch.channels_last_3d)
            optimiser.zero_grad()
            if references:  # the Dice and the drawing of the reference it comes from are both supervised
                predicted, logits = network.forward_with_reference(inputs)
                loss = loss_function(predicted, targets.to(device)) + F.binary_cross_entropy_with_logits(
                    logits, references[0].to(device).contiguous(memory_format=torch.channels_last_3d))
            else:
                loss = loss_function(network(inputs), targets.to(device))
            loss.backward()
            optimiser.step()
            losses.append(loss.item())
            steps.set_postfix(loss=f"{np.mean(losses):.4f}")
        history.append({"fold": fold, "epoch": epoch + 1, "train_loss": float(np.mean(losses)),
                        "learning_rate": config.learning_rate_at(epoch)})
        if not sys.stderr.isatty():
            print(f"fold {fold} epoch {epoch + 1}/{config.epochs}: train loss {history[-1]['train_loss']:.5f}",
                  file=sys.stderr, flush=True)
        # atomic: --resume after a kill mid-save must find the previous epoch's whole checkpoint
        with atomic_path(checkpoint_dir / f"fold{fold}-epoch{epoch + 1:04d}.pt") as checkpoint:
            torch.save({"network": network.state_dict(), "optimiser": optimiser.state_dict(),
                        "epoch": epoch, "history": json.dumps(history)}, checkpoint)
    return network, history


def train(manifest: str | Path, out_dir: str | Path, config: TrainConfig, resume: bool = False,
          cache_dir: Path | None = None, init_from: Path | None = None) -> ModelCard:
    """Train ``config.folds`` models and write the model folder; returns its card. With ``init_from`` (a
    model folder) every fold starts from that model's weights instead of random ones: fine-tuning."""
    if config.architecture not in ARCHITECTURES:
        raise InputError(f"unknown architecture '{config.architecture}' (choose from {', '.join(ARCHITECTURES)})")
    initial_state, initialised_from = _initial_state(init_from, config) if init_from else (None, None)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = read_manifest(manifest)
    _check_folds(rows, config.folds)
    cases = load_cases(rows, cache_dir or out_dir / "cache", workers=config.workers)
    device = device_for(config.device)
    states, history, held_out_true, held_out_predicted = [], [], [], []
    for fold, (train_cases, validation_cases) in enumerate(_folds(cases, config.folds, config.seed)):
        network, fold_history = _train_fold(fold, train_cases, config, out_dir, resume, device,
                                             initial_state)
        history += fold_history
        if validation_cases:
            true, predicted = predict_candidates(network, validation_cases, config.input, device, config.test_time_flip)
            held_out_true.append(true)
            held_out_predicted.append(predicted)
        states.append({k: v.contiguous().cpu() for k, v in network.state_dict().items()})
    true_dice = np.array([c.dice for case in cases for c in case.candidates])
    realistic = np.array([c.dice for case in cases for c in case.candidates if not c.row.kind.startswith("failure")])
    card = ModelCard(
        name=config.name, version=config.version, architecture=config.architecture, input=config.input,
        modalities=sorted({case.modality for case in cases}), roi_names=sorted({r.roi for r in rows}, key=str.lower),
        contourqa_version=__version__, created=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        seed=config.seed, ensemble_size=len(states), test_time_flip=config.test_time_flip,
        training_data={"cases": len(cases), "candidates": len(true_dice), "rois": sorted({r.roi for r in rows}),
                       "dice_min": float(true_dice.min()), "dice_max": float(true_dice.max()),
                       "dice_mean": float(true_dice.mean()),
                       "dice_mean_realistic": float(realistic.mean()) if realistic.size else float(true_dice.mean()),
                       "manifest": str(Path(manifest).name),
                       "initialised_from": initialised_from,
                       "config": json.loads(config.model_dump_json())},
        cross_validation=regression_metrics(np.concatenate(held_out_true), np.concatenate(held_out_predicted))
        if held_out_true else {},
        training_command=shlex.join(["contourqa", *sys.argv[1:]]) if sys.argv and "contourqa" in sys.argv[0] else "",
    )
    with atomic_path(out_dir / WEIGHTS_FILE) as weights:
        torch.save(states, weights)
    write_text_atomically(out_dir / "history.json", json.dumps(history, indent=2))
    write_card(card, out_dir)  # the card last: a folder with a card is a whole model
    return card
