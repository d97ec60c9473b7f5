"""DICOM node benchmark.

    python bench/bench_node.py [--repeat 3] [--cases 8] [--part all|ingest|cases]

1. Ingest: a 300-instance 320x320 MR series over one association (dcmtk storescu), into contourqa's
   SCP (store + index + assembler) with its index on SQLite and on PostgreSQL (a throw-away local
   cluster, as the tests start it), a bare pynetdicom SCP that only writes files (the ceiling of a
   Python SCP), dcmtk storescp and Orthanc (which also stores and indexes). dcmtk runs with
   TCP_NODELAY=1 (without it Nagle's algorithm halves its rate). Instances per second, and each one's
   ratio to the bare SCP.
2. Latency: last C-STORE of a 28-slice series with one RTSTRUCT -> SR at a dcmtk storescp, through
   `contourqa serve` on the CPU, with MC dropout (10 passes, the default) and without.
3. Throughput: cases per minute through `serve` with 1, 2 and 4 inference processes (the machine's
   cores are printed: processes beyond them cannot add speed).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid
from pynetdicom import AE, evt
from pynetdicom.sop_class import MRImageStorage as MRStorageClass

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from node_harness import DCMTK_ENV, Destination, Node, listening, clone_study, dcmtk, free_port, wait_for  # noqa: E402

from contourqa.daemon.assembler import Assembler  # noqa: E402
from contourqa.daemon.config import ScpSettings  # noqa: E402
from contourqa.daemon.db import open_database  # noqa: E402
from contourqa.daemon.metrics import Metrics  # noqa: E402
from contourqa.daemon.scp import Ingest, start_scp  # noqa: E402
from contourqa.daemon.store import Store  # noqa: E402
from contourqa.training.phantom import PhantomSpec, generate_phantom_studies  # noqa: E402


def write_series(folder: Path, slices: int = 300, size: int = 320) -> Path:
    folder.mkdir(parents=True)
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    rng = np.random.default_rng(0)
    for k in range(slices):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SOPClassUID, ds.SOPInstanceUID = MRImageStorage, generate_uid()
        ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID = MRImageStorage, ds.SOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.Modality, ds.PatientID, ds.InstanceNumber = "MR", "BENCH", k + 1
        ds.ImagePositionPatient, ds.ImageOrientationPatient = [0, 0, k * 1.0], [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing, ds.SliceThickness = [1, 1], 1
        ds.Rows = ds.Columns = size
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
        ds.PixelData = rng.integers(0, 4096, (size, size), dtype=np.uint16).tobytes()
        ds.save_as(folder / f"{k:04d}.dcm", enforce_file_format=True)
    return folder


def send_seconds(port: int, folder: Path, called: str) -> float:
    start = time.perf_counter()
    subprocess.run([dcmtk("storescu"), "+sd", "-aet", "PACS", "-aec", called, "127.0.0.1", str(port), str(folder)],
                   check=True, capture_output=True, env=DCMTK_ENV)
    return time.perf_counter() - start


def bare_pynetdicom_scp(out: Path):
    """What pynetdicom's storescp does with -od: write each dataset as received, nothing else."""
    def handle(event):
        with open(out / event.request.AffectedSOPInstanceUID, "wb") as f:
            f.write(event.encoded_dataset())
        return 0x0000
    ae = AE(ae_title="BARE")
    ae.add_supported_context(MRStorageClass)
    port = free_port()
    return ae.start_server(("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_STORE, handle)]), port


def start_orthanc(folder: Path) -> tuple[subprocess.Popen, int] | None:
    """Orthanc (Debian's `orthanc`) storing into its own folder and SQLite index, as a PACS would; None
    when it is not installed."""
    if shutil.which("Orthanc") is None:
        return None
    folder.mkdir()
    port = free_port()
    config = folder / "orthanc.json"
    config.write_text(json.dumps({
        "Name": "bench", "StorageDirectory": str(folder / "storage"), "IndexDirectory": str(folder),
        "DicomAet": "ORTHANC", "DicomPort": port, "HttpPort": free_port(), "RemoteAccessAllowed": False,
        "DicomCheckCalledAet": False, "StorageCompression": False, "Plugins": []}))
    process = subprocess.Popen(["Orthanc", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for(lambda: listening(port), 30, "Orthanc to listen")
    return process, port


def contourqa_rate(home: Path, database_url: str, series: Path) -> float:
    home.mkdir()
    sessions = open_database(database_url)
    ingest = Ingest(Store(home / "store", sessions), Assembler(sessions, lambda _: None), Metrics())
    server = start_scp(ScpSettings(port=0, min_free_disk_mb=0), ingest, home / "incoming")
    try:
        return 300 / send_seconds(server.server_address[1], series, "CONTOURQA")
    finally:
        server.shutdown()


def start_postgres():
    """A throw-away PostgreSQL cluster (tests/postgres.py); None when PostgreSQL is not installed."""
    from postgres import PostgresServer
    try:
        return PostgresServer().start()
    except RuntimeError:
        return None


def bench_ingest(work: Path, repeat: int) -> None:
    series = write_series(work / "series300")
    rates: dict[str, list[float]] = {"contourqa (SQLite)": [], "contourqa (PostgreSQL)": [], "bare pynetdicom": [],
                                     "dcmtk storescp": [], "Orthanc": []}
    postgres = start_postgres()
    for n in range(repeat):
        rates["contourqa (SQLite)"].append(contourqa_rate(work / f"cqa{n}", f"sqlite:///{work / f'cqa{n}.sqlite'}",
                                                          series))
        if postgres is not None:
            rates["contourqa (PostgreSQL)"].append(
                contourqa_rate(work / f"cqa-pg{n}", postgres.create_database(f"bench{n}"), series))
        (work / f"bare{n}").mkdir()
        server, port = bare_pynetdicom_scp(work / f"bare{n}")
        rates["bare pynetdicom"].append(300 / send_seconds(port, series, "BARE"))
        server.shutdown()
        dest = Destination(work / f"dcmtk{n}").start()
        rates["dcmtk storescp"].append(300 / send_seconds(dest.port, series, "DEST"))
        dest.stop()
        orthanc = start_orthanc(work / f"orthanc{n}")
        if orthanc is not None:
            rates["Orthanc"].append(300 / send_seconds(orthanc[1], series, "ORTHANC"))
            orthanc[0].terminate()
            orthanc[0].wait(timeout=30)
    if postgres is not None:
        postgres.stop()
    bare = statistics.median(rates["bare pynetdicom"])
    print("\ningest, 300 x 320x320 MR over one association (instances/s, median of", repeat, "runs)")
    for name, values in rates.items():
        if not values:
            print(f"  {name:<24} not installed")
            continue
        rate = statistics.median(values)
        print(f"  {name:<24} {rate:8.1f}   ratio to bare pynetdicom {rate / bare:5.2f}")


def bench_latency_and_throughput(work: Path, repeat: int, cases: int) -> None:
    phantom = work / "phantom"
    generate_phantom_studies(phantom, 1, 5, PhantomSpec(320, 320, 28))
    case = phantom / "case000"
    for mc in (10, 0):
        destination = Destination(work / f"dest-mc{mc}").start()
        node = Node(work / f"home-mc{mc}", export={"default_destination": destination.address},
                    assess={"mc_samples": mc}).start()
        latencies = []
        for n in range(repeat + 1):  # the first case also pays the broker's and database's first use
            study = clone_study(case, work / f"lat-mc{mc}-{n}")
            subprocess.run([dcmtk("storescu"), "+sd", "-aet", "PACS", "-aec", "CONTOURQA", "127.0.0.1",
                            str(node.port), str(study)], check=True, capture_output=True, env=DCMTK_ENV)
            sent = time.perf_counter()
            wait_for(lambda: len(destination.received()) == n + 1, 120, "the SR", interval=0.02)
            if n:
                latencies.append(time.perf_counter() - sent)
        node.stop()
        destination.stop()
        print(f"\nlatency last C-STORE -> SR at destination, 320x320x28 + RTSTRUCT (5 ROIs), MC passes {mc}: "
              f"median {statistics.median(latencies):.2f} s (runs: {', '.join(f'{v:.2f}' for v in latencies)})")
    studies = [clone_study(case, work / f"tp{n}") for n in range(cases)]
    print(f"\nthroughput on {os.cpu_count()} CPU cores, {cases} studies sent at once (320x320x28 + RTSTRUCT, "
          f"MC dropout 10 passes)")
    for concurrency in (1, 2, 4):
        destination = Destination(work / f"dest-tp{concurrency}").start()
        node = Node(work / f"home-tp{concurrency}", export={"default_destination": destination.address},
                    worker={"concurrency": concurrency}, assess={"mc_samples": 10}).start()
        start = time.perf_counter()
        senders = [subprocess.Popen([dcmtk("storescu"), "+sd", "-aet", "PACS", "-aec", "CONTOURQA", "127.0.0.1",
                                     str(node.port), str(s)], stdout=subprocess.DEVNULL, env=DCMTK_ENV)
                   for s in studies]
        for sender in senders:
            sender.wait()
        wait_for(lambda: len(destination.received()) == cases, 600, "all SRs", interval=0.05)
        elapsed = time.perf_counter() - start
        node.stop()
        destination.stop()
        print(f"throughput with {concurrency} inference process(es): {cases} cases in {elapsed:.1f} s = "
              f"{cases / elapsed * 60:.1f} cases/min")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--cases", type=int, default=8)
    parser.add_argument("--part", choices=("all", "ingest", "cases"), default="all",
                        help="ingest only, latency and throughput only, or both (default)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if args.part in ("all", "ingest"):
            bench_ingest(work, args.repeat)
        if args.part in ("all", "cases"):
            bench_latency_and_throughput(work, args.repeat, args.cases)


if __name__ == "__main__":
    main()
