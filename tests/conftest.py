"""Shared fixtures: phantom studies made by the project's own generator, and the real vendor data."""

from __future__ import annotations

import atexit
import csv
import os

# The test workers (xdist) and every process they start (CLI, nodes) share the machine's cores: one torch
# thread each. With the default of one per core, they oversubscribe the cores and torch's threads wait on
# each other: `train --quick --folds 2` took 170 s beside one other busy process, 44 s with one thread.
# Set before anything imports torch; the subprocesses inherit it.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest

from cli_runner import CliRunner
from contourqa.training.phantom import PhantomSpec, generate_phantom_studies

REALDATA = Path(__file__).resolve().parents[1].parent / "shared" / "realdata"
SMALL = PhantomSpec(rows=128, columns=128, slices=28)
THIGH = REALDATA / "ibsi_sts_008" / "MR_T1"  # real T1 MR of a thigh sarcoma (Philips), MIM RTSTRUCT


@pytest.fixture(scope="session")
def realdata() -> Path:
    if not REALDATA.is_dir():
        pytest.skip(f"real vendor data not found at {REALDATA}")
    return REALDATA


def set_image_tags(image_dir: Path, **tags) -> None:
    """Change these header keywords in every image of a series folder (None deletes one), as another
    scanner would have written them."""
    for path in image_dir.iterdir():
        dataset = pydicom.dcmread(path)
        for keyword, value in tags.items():
            if value is None:
                delattr(dataset, keyword)
            else:
                setattr(dataset, keyword, value)
        dataset.save_as(path)


@pytest.fixture(scope="session")
def thigh_named_prostate(realdata, tmp_path_factory):
    """Real T1 MR of a thigh sarcoma (Philips, MIM contour) whose ROI is renamed to one the pelvis model covers."""
    structure = pydicom.dcmread(next((THIGH / "mask").glob("*.dcm")))
    structure.StructureSetROISequence[0].ROIName = "Prostate"
    path = tmp_path_factory.mktemp("thigh") / "rtstruct.dcm"
    structure.save_as(path)
    return path


@pytest.fixture(scope="session")
def postgres():
    """One real PostgreSQL server per test process (Debian's binaries, a throw-away cluster)."""
    from postgres import PostgresServer
    server = PostgresServer().start()
    yield server
    server.stop()


_databases = iter(range(1_000_000))


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request, tmp_path) -> str:
    """The node's database, once on SQLite (a file in the test's folder) and once on a new PostgreSQL
    database: the node's suites run on both, as sites run both."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'contourqa.sqlite'}"
    return request.getfixturevalue("postgres").create_database(f"node{next(_databases)}")


@pytest.fixture(scope="session")
def phantom(tmp_path_factory) -> Path:
    """Two small phantom studies; seed 1 makes case000 oblique and case001 axial."""
    out = tmp_path_factory.mktemp("phantom")
    generate_phantom_studies(out, cases=2, seed=1, spec=SMALL)
    return out


@pytest.fixture
def case_copy(phantom, tmp_path) -> Path:
    """A private copy of case001 that a test may damage."""
    target = tmp_path / "case"
    shutil.copytree(phantom / "case001", target)
    return target


_cli = CliRunner()
atexit.register(_cli.close)


def run_cli(*args: str) -> subprocess.CompletedProcess:
    """`python -m contourqa.cli ARGS` in a process of its own, as a user runs it; forked from a process that
    has already imported torch and the DICOM libraries (tests/cli_runner.py), which saves the 2-5 s of CPU
    those imports cost every command (the suite: 892 s -> 668 s)."""
    return _cli.run(list(map(str, args)), timeout=300)


def require_tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed; tests/run_all.sh installs it")
    return path


@pytest.fixture(scope="session")
def phantom_cache(tmp_path_factory) -> Path:
    """Where the phantom's rasterised studies are kept (`--cache`): rasterised by the first command that
    needs them, read by every later one."""
    return tmp_path_factory.mktemp("phantom-cache")


def one_case_manifest(phantom: Path, case_id: str, folder: Path) -> Path:
    """The phantom manifest's rows of one case, its paths made absolute, as FOLDER/CASE_ID.csv."""
    with open(phantom / "manifest.csv", newline="") as source:
        rows = list(csv.DictReader(source))
    path = folder / f"{case_id}.csv"
    with open(path, "w", newline="") as target:
        writer = csv.DictWriter(target, fieldnames=list(rows[0]))
        writer.writeheader()
        for row in rows:
            if row["case_id"] == case_id:
                writer.writerow({**row, **{k: str(phantom / row[k]) for k in ("image", "reference", "candidate")}})
    return path


@pytest.fixture(scope="session")
def picker_model(phantom, phantom_cache, tmp_path_factory) -> Path:
    """An edge picker model folder trained by `contourqa picker` on the first phantom study, its spread
    limit and interval set on the second."""
    folder = tmp_path_factory.mktemp("picker")
    trained = run_cli("picker", "--manifest", one_case_manifest(phantom, "case000", folder), "--out", folder / "model",
                      "--held", one_case_manifest(phantom, "case001", folder), "--cache", phantom_cache)
    assert trained.returncode == 0, trained.stderr
    return folder / "model"


@pytest.fixture(scope="session")
def quick_model(phantom, phantom_cache, tmp_path_factory) -> Path:
    """A model trained by `contourqa train --quick --folds 2` on the two phantom cases."""
    out = tmp_path_factory.mktemp("model") / "quick"
    result = run_cli("train", "--manifest", phantom / "manifest.csv", "--out", out, "--quick", "--folds", "2",
                     "--seed", "3", "--cache", phantom_cache)
    assert result.returncode == 0, result.stderr
    return out


def headless_chromium(profile: Path) -> list[str]:
    """Debian's chromium, headless, fetching nothing on its own, the page's console logged to stderr; add
    --dump-dom or --screenshot and the page's address."""
    return [require_tool("chromium"), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
            "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync",
            f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0"]


@pytest.fixture
def destination(tmp_path):
    """A dcmtk storescp the node sends its SRs to."""
    from node_harness import Destination

    dest = Destination(tmp_path / "received").start()
    yield dest
    dest.stop()


@pytest.fixture
def node_factory(tmp_path):
    """Makes `contourqa serve` nodes on a fresh home (started by the test), stopped at the end."""
    from node_harness import Node

    nodes = []

    def make(**config) -> Node:
        node = Node(tmp_path / "home", **config)
        nodes.append(node)
        return node
    yield make
    for node in nodes:
        node.stop()


def draw_round_one_voxel(case: Path, roi_name: str) -> None:
    """Redraw ROI ``roi_name`` of an axial phantom case's reference.dcm as one square of 0.6 pixel round the
    pixel centre nearest its middle contour's middle: a contour that covers one voxel."""
    structure = pydicom.dcmread(case / "reference.dcm")
    number = next(r.ROINumber for r in structure.StructureSetROISequence if r.ROIName == roi_name)
    roi = next(r for r in structure.ROIContourSequence if r.ReferencedROINumber == number)
    contour = roi.ContourSequence[len(roi.ContourSequence) // 2]
    points = np.array(contour.ContourData, dtype=float).reshape(-1, 3)
    image = pydicom.dcmread(next(p for p in (case / "image").iterdir()
                                 if abs(float(pydicom.dcmread(p).ImagePositionPatient[2]) - points[0, 2]) < 1e-3))
    x0, y0 = map(float, image.ImagePositionPatient[:2])
    row_mm, column_mm = map(float, image.PixelSpacing)
    centre = [x0 + round((points[:, 0].mean() - x0) / column_mm) * column_mm,
              y0 + round((points[:, 1].mean() - y0) / row_mm) * row_mm]
    half = 0.3 * np.array([column_mm, row_mm])
    corners = [(centre[0] + sx * half[0], centre[1] + sy * half[1], points[0, 2])
               for sx, sy in ((-1, -1), (1, -1), (1, 1), (-1, 1))]
    contour.ContourData = [f"{v:.4f}" for corner in corners for v in corner]
    contour.NumberOfContourPoints = 4
    roi.ContourSequence = [contour]
    structure.save_as(case / "reference.dcm")
