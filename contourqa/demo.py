"""`contourqa demo`: a phantom study through a node over DICOM and back, in one command.

Standalone it starts `contourqa serve` on a temporary home (embedded defaults, any free port); with
``--node`` it sends to a node already running whose destination is this command's ``--listen`` port.
It plays the TPS: sends the image series and an auto-contour, receives the SR, checks it and prints
the verdicts with their reasons. Exit 0 only when the SR arrived and is a valid Comprehensive 3D SR
about the structure set that was sent.
"""

from __future__ import annotations

import argparse
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import highdicom as hd
import pydicom
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, evt
from pynetdicom.sop_class import Comprehensive3DSRStorage, MRImageStorage, RTStructureSetStorage

from contourqa.daemon.config import Destination
from contourqa.qa_models.errors import InputError

EXIT_OK, EXIT_NO_REPORT = 0, 1  # 2: bad input or a node that cannot be reached (contourqa's InputError)
RECEIVER_AE = "DEMO_TPS"


def run_demo(args: argparse.Namespace) -> int:
    from contourqa.training.phantom import generate_phantom_studies

    if args.node and not args.listen:
        raise InputError("--node needs --listen PORT: the port of that node's destination, where the SR comes back")
    work = args.work or Path(tempfile.mkdtemp(prefix="contourqa-demo-"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"demo: generating a phantom study under {work}", file=sys.stderr)
    generate_phantom_studies(work / "study", 1, seed=0)
    study = work / "study" / "case000"
    structure = study / "candidates" / "auto02.dcm"
    received: queue.Queue[pydicom.Dataset] = queue.Queue()
    receiver = _start_receiver(args.listen, received)
    port = receiver.server_address[1]
    node = None
    try:
        if args.node:
            try:
                node_address = Destination.parse(args.node)
            except ValueError as error:  # pydantic's ValidationError is one too
                raise InputError(f"--node: {str(error).splitlines()[0]}") from None
            ae_title, host, node_port = node_address.ae_title, node_address.host, node_address.port
        else:
            node, node_port = _start_node(work / "node", port)
            ae_title, host = "CONTOURQA", "127.0.0.1"
        print(f"demo: sending {len(list((study / 'image').iterdir()))} MR images and {structure.name} "
              f"to {ae_title}@{host}:{node_port}", file=sys.stderr)
        _send(host, node_port, ae_title, sorted((study / "image").iterdir()) + [structure])
        try:
            sr = received.get(timeout=args.timeout)
        except queue.Empty:
            print(f"demo: no SR within {args.timeout:.0f} s", file=sys.stderr)
            return EXIT_NO_REPORT
    finally:
        receiver.shutdown()
        if node is not None:
            _stop_node(node)
    sr_path = work / "qa-report.dcm"
    sr.save_as(sr_path, enforce_file_format=True)
    try:
        report = hd.sr.srread(sr_path)
    except Exception as error:  # highdicom raises many types on a malformed report
        print(f"demo: the SR is not valid: unreadable ({type(error).__name__}: {error})", file=sys.stderr)
        return EXIT_NO_REPORT
    problem = _check_sr(report, pydicom.dcmread(structure, stop_before_pixels=True))
    if problem:
        print(f"demo: the SR is not valid: {problem}", file=sys.stderr)
        return EXIT_NO_REPORT
    _print_verdicts(report)
    print(f"\nSR: {sr_path}" + (f"\nnode home: {work / 'node'}" if node is not None else ""))
    if args.work is None and node is not None:
        shutil.rmtree(work / "node", ignore_errors=True)  # the SR and the study stay for the user to look at
    return EXIT_OK


def _start_receiver(port: int, received: queue.Queue):
    """The TPS's side: a Storage SCP that accepts the SR."""
    def on_store(event: evt.Event) -> int:
        dataset = event.dataset
        dataset.file_meta = event.file_meta
        received.put(dataset)
        return 0x0000

    ae = AE(ae_title=RECEIVER_AE)
    ae.add_supported_context(Comprehensive3DSRStorage, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
    try:
        return ae.start_server(("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)])
    except OSError as error:
        raise InputError(f"cannot listen on 127.0.0.1:{port}: {error.strerror or error}") from None


def _start_node(home: Path, destination_port: int) -> tuple[subprocess.Popen, int]:
    port_file = home / "run" / "scp.port"
    command = [sys.executable, "-m", "contourqa", "serve", "--home", str(home), "--port", "0",
               "--destination", f"{RECEIVER_AE}@127.0.0.1:{destination_port}"]
    home.mkdir(parents=True, exist_ok=True)
    log = open(home / "serve.log", "w")
    node = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    print(f"demo: starting a node on {home} (log: {home / 'serve.log'})", file=sys.stderr)
    deadline = time.monotonic() + 120
    while not port_file.exists():
        if node.poll() is not None or time.monotonic() > deadline:
            _stop_node(node)
            raise InputError(f"the node did not start; see {home / 'serve.log'}")
        time.sleep(0.2)
    return node, int(port_file.read_text())


def _stop_node(node: subprocess.Popen) -> None:
    if node.poll() is None:
        node.send_signal(signal.SIGINT)  # the clean stop: running cases finished, Redis flushed
        try:
            node.wait(timeout=120)
        except subprocess.TimeoutExpired:
            node.kill()
            node.wait()


def _send(host: str, port: int, ae_title: str, files: list[Path]) -> None:
    ae = AE(ae_title="DEMO_PACS")
    for sop_class in (MRImageStorage, RTStructureSetStorage):
        ae.add_requested_context(sop_class, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
    assoc = ae.associate(host, port, ae_title=ae_title)
    if not assoc.is_established:
        raise InputError(f"no association with {ae_title}@{host}:{port} (is the node running?)")
    try:
        for path in files:
            status = assoc.send_c_store(path)
            if not status or status.Status != 0x0000:
                raise InputError(f"{path.name} was refused by the node "
                                 f"(status {'none' if not status else f'0x{status.Status:04X}'})")
    finally:
        assoc.release()


def _check_sr(sr: hd.sr.Comprehensive3DSR, structure: pydicom.Dataset) -> str | None:
    """What is wrong with the SR, or None: a Comprehensive 3D SR (TID 1500) whose evidence names the
    structure set that was sent, with measurement groups."""
    evidence = {item.ReferencedSOPInstanceUID for study in sr.get("CurrentRequestedProcedureEvidenceSequence", [])
                for series in study.ReferencedSeriesSequence for item in series.ReferencedSOPSequence}
    if structure.SOPInstanceUID not in evidence:
        return "its evidence does not name the structure set that was sent"
    if not _groups(sr):
        return "no measurement group"
    return None


def _groups(sr: hd.sr.Comprehensive3DSR) -> list:
    """One measurement group per ROI: per structure (RTSTRUCT) or per segment (SEG)."""
    return sr.content.get_image_measurement_groups() + sr.content.get_volumetric_roi_measurement_groups()


def _print_verdicts(sr: hd.sr.Comprehensive3DSR) -> None:
    groups = _groups(sr)
    print(f"{'ROI':<24} {'predicted Dice':>14}  {'verdict':<8} reasons")
    for group in groups:
        name = group.tracking_identifier.split(": ", 1)[-1]
        evaluations: dict[str, list] = {}
        for evaluation in group.get_qualitative_evaluations():
            evaluations.setdefault(evaluation.name.value, []).append(evaluation.value)
        dice = next((m.value for m in group.get_measurements() if m.name.value == "130920"), None)
        verdict = evaluations.get("VERDICT", [None])[0]
        verdict = verdict.value.lower() if verdict is not None else "?"  # 99CQA ACCEPT, REVIEW, REJECT
        reasons = "; ".join(r.meaning for r in evaluations.get("VERDICT-WHY", [])) or "-"
        shown = f"{dice:.3f}" if dice is not None else "-"
        print(f"{name[:24]:<24} {shown:>14}  {verdict:<8} {reasons}")
