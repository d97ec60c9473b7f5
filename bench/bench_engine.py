"""Engine benchmark on one 320x320x28 phantom case: loading, rasterisation (side by side with
plastimatch on the same input), screens, SR writing, whole `assess`, and peak memory.

    python bench/bench_engine.py [--repeat 5]

Figures are medians of the repeats; the plastimatch ratio is what to compare across machines.
"""

from __future__ import annotations

import argparse
import resource
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pydicom
import SimpleITK as sitk

from timing import median_seconds

from contourqa.qa_models.assessment import AssessConfig, assess
from contourqa.qa_models.geometry import to_sitk
from contourqa.qa_models.rtstruct import rasterise_roi, read_rois
from contourqa.qa_models.screens import ScreenConfig, body_mask, run_screens
from contourqa.qa_models.series import load_series
from contourqa.qa_models.sr_report import write_sr
from contourqa.training.phantom import PhantomSpec, generate_phantom_studies


def rasterise_to_nifti(image_dir: Path, structure_path: Path, out: Path) -> None:
    """What `contourqa rasterise` does, without the interpreter start-up and imports."""
    out.mkdir(exist_ok=True)
    series = load_series(image_dir)
    for roi in read_rois(pydicom.dcmread(structure_path)):
        mask = rasterise_roi(roi, series).mask.astype("uint8")
        sitk.WriteImage(to_sitk(mask, series.grid), str(out / f"{roi.number}.nii.gz"), useCompression=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    plastimatch = shutil.which("plastimatch")
    if plastimatch is None:
        print("plastimatch not found: apt-get install plastimatch", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        generate_phantom_studies(root, cases=1, seed=2024, spec=PhantomSpec(320, 320, 28))
        study = root / "case000"
        image_dir, structure_path = study / "image", study / "reference.dcm"
        structure = pydicom.dcmread(structure_path)
        series = load_series(image_dir)
        rois = read_rois(structure)
        body = body_mask(series.array, series.modality)
        masks = [rasterise_roi(roi, series).mask for roi in rois]
        assessment = assess(series, structure)

        rows = [
            ("load series (28 x 320x320)", median_seconds(lambda: load_series(image_dir), args.repeat)),
            ("read RTSTRUCT", median_seconds(lambda: read_rois(pydicom.dcmread(structure_path)), args.repeat)),
            (f"rasterise {len(rois)} ROIs (in process)",
             median_seconds(lambda: [rasterise_roi(roi, series) for roi in rois], args.repeat)),
            ("body mask (once per series)", median_seconds(lambda: body_mask(series.array, "MR"), args.repeat)),
            (f"screens, {len(rois)} ROIs",
             median_seconds(lambda: [run_screens(m, series.grid, r.name, body, ScreenConfig())
                                     for m, r in zip(masks, rois)], args.repeat)),
            ("write SR", median_seconds(lambda: write_sr(assessment, root / "sr.dcm"), args.repeat)),
            ("assess, whole (load + rasterise + screens + SR)",
             median_seconds(lambda: write_sr(assess(load_series(image_dir), pydicom.dcmread(structure_path),
                                                    AssessConfig()), root / "sr.dcm"), args.repeat)),
        ]
        in_process = median_seconds(lambda: rasterise_to_nifti(image_dir, structure_path, root / "in_process"),
                                    args.repeat)
        ours_cli = median_seconds(lambda: subprocess.run(
            [sys.executable, "-m", "contourqa.cli", "rasterise", str(image_dir), str(structure_path),
             "--out", str(root / "ours")], check=True, capture_output=True), args.repeat)
        theirs_cli = median_seconds(lambda: subprocess.run(
            [plastimatch, "convert", "--input", str(structure_path), "--referenced-ct", str(image_dir),
             "--output-prefix", str(root / "plastimatch"), "--prefix-format", "nii.gz", "--xor-contours"],
            check=True, capture_output=True), args.repeat)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    width = max(len(name) for name, _ in rows) + 2
    print(f"{'step':<{width}} {'median s':>9}")
    for name, seconds in rows:
        print(f"{name:<{width}} {seconds:>9.4f}")
    print()
    print("rasterise every ROI to NIfTI, whole command (process start, DICOM read, fill, write):")
    print(f"{'  contourqa rasterise (incl. ~1 s Python start-up)':<{width}} {ours_cli:>9.3f}")
    print(f"{'  contourqa, same work in process':<{width}} {in_process:>9.3f}")
    print(f"{'  plastimatch convert --xor-contours':<{width}} {theirs_cli:>9.3f}")
    print(f"{'  ratio plastimatch / contourqa command':<{width}} {theirs_cli / ours_cli:>9.2f}")
    print(f"{'  ratio plastimatch / contourqa in process':<{width}} {theirs_cli / in_process:>9.2f}")
    print(f"\npeak resident memory of this process: {peak_mb:.0f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
