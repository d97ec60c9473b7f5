"""Training and evaluation manifests: `case_id,image,reference,candidate,roi` plus optional clinical columns."""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

from contourqa.qa_models.errors import InputError

REQUIRED_COLUMNS = ("case_id", "image", "reference", "candidate", "roi")
# Columns that describe how a candidate was made or scored (the phantom's kind; `export-training`'s Dice
# values); never features for a baseline.
DESCRIPTIVE_COLUMNS = ("kind", "real_dice", "predicted_dice")


@dataclass(frozen=True)
class ManifestRow:
    case_id: str
    image: Path
    reference: Path
    candidate: Path
    roi: str
    kind: str = ""
    clinical: dict[str, str] = field(default_factory=dict)


def read_manifest(path: str | Path) -> list[ManifestRow]:
    """Rows with paths resolved relative to the manifest; a missing column or file is an InputError."""
    path = Path(path)
    try:
        with path.open(newline="") as handle:
            reader = csv.DictReader(handle)
            missing = [c for c in REQUIRED_COLUMNS if c not in (reader.fieldnames or [])]
            if missing:
                raise InputError(f"{path}: manifest lacks column(s) {', '.join(missing)}")
            records = list(reader)
    except FileNotFoundError:
        raise InputError(f"{path}: no such manifest") from None
    except (UnicodeDecodeError, csv.Error) as error:
        raise InputError(f"{path}: not a CSV manifest ({error})") from None
    if not records:
        raise InputError(f"{path}: manifest has no rows")
    rows = []
    for line, record in enumerate(records, start=2):
        paths = {key: (path.parent / record[key]).resolve() for key in ("image", "reference", "candidate")}
        for key, value in paths.items():
            if not value.exists():
                raise InputError(f"{path}:{line}: {key} {record[key]} does not exist")
        clinical = {k: v for k, v in record.items()
                    if k not in REQUIRED_COLUMNS and k not in DESCRIPTIVE_COLUMNS and k is not None}
        rows.append(ManifestRow(record["case_id"], paths["image"], paths["reference"], paths["candidate"],
                                record["roi"], record.get("kind", "") or "", clinical))
    return rows


def manifest_names(manifests: list[Path]) -> str:
    """Manifests as a model card names them, each with its folder: they are mostly all called manifest.csv."""
    return ", ".join(f"{m.parent.name}/{m.name}" if m.parent.name else m.name for m in map(Path, manifests))


def refuse_shared_series(trained: list[ManifestRow], held_out: list[ManifestRow], why: str) -> None:
    """Held-out studies must be studies the fit never saw: refuse manifests that share an image series,
    ``why`` saying what needs them apart."""
    shared = {r.image.resolve() for r in trained} & {r.image.resolve() for r in held_out}
    if shared:
        raise InputError(f"{why}; {len(shared)} image series are in both manifests (e.g. {sorted(shared)[0]})")
