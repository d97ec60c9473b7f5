"""The SCP and its store in process, with real associations on loopback (pynetdicom and dcmtk peers),
real SQLite, and the assembler's dispatch collected in a list instead of a broker."""

from __future__ import annotations

import shutil
import ssl
import subprocess
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom.sop_class import MRImageStorage, Verification
from sqlalchemy import func, select

from contourqa.daemon.assembler import Assembler
from contourqa.daemon.config import AllowedCaller, ScpSettings
from contourqa.daemon.db import Case, Instance, open_database
from contourqa.daemon.metrics import Metrics
from contourqa.daemon.scp import Ingest, start_scp
from contourqa.daemon.store import CANNOT_UNDERSTAND, DATASET_MISMATCH, OUT_OF_RESOURCES, Store, StoreError
from node_harness import DCMTK_ENV, clone_study, dcmtk, send


class Scp:
    def __init__(self, home: Path, database_url: str | None = None, **settings):
        self.home = home
        self.sessions = open_database(database_url or f"sqlite:///{home / 'db.sqlite'}")
        self.dispatched: list[str] = []
        self.settings = ScpSettings(port=0, **settings)
        self.store = Store(home / "store", self.sessions, self.settings.min_free_disk_mb)
        ingest = Ingest(self.store, Assembler(self.sessions, self.dispatched.append), Metrics())
        self.server = start_scp(self.settings, ingest, home / "incoming")
        self.port = self.server.server_address[1]

    def close(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server = None

    def instances(self) -> int:
        with self.sessions() as session:
            return session.scalar(select(func.count()).select_from(Instance))

    def stored_files(self) -> list[Path]:
        return sorted(p for p in (self.home / "store").rglob("*") if p.is_file())


@pytest.fixture
def scp(tmp_path):
    yield from _servers(tmp_path, None)


@pytest.fixture
def scp_on_each_database(tmp_path, database_url):
    """The SCP on SQLite and on PostgreSQL (conftest's database_url)."""
    yield from _servers(tmp_path, database_url)


def _servers(tmp_path, database_url):
    servers = []

    def make(**settings) -> Scp:
        server = Scp(tmp_path, database_url, **settings)
        servers.append(server)
        return server
    yield make
    for server in servers:
        server.close()


def _store_with_pynetdicom(port: int, dataset: Dataset, calling_ae: str = "PACS") -> int:
    ae = AE(ae_title=calling_ae)
    ae.add_requested_context(MRImageStorage)
    assoc = ae.associate("127.0.0.1", port, ae_title="CONTOURQA")
    assert assoc.is_established
    status = assoc.send_c_store(dataset)
    assoc.release()
    return int(status.Status)


def test_a_series_and_structure_set_are_stored_once_and_the_case_dispatched_once(phantom, scp_on_each_database):
    server = scp_on_each_database()
    case = phantom / "case001"
    assert send(server.port, case / "candidates" / "auto01.dcm").returncode == 0
    assert server.dispatched == []  # the structure set waits for its images
    assert send(server.port, case / "image").returncode == 0
    assert len(server.dispatched) == 1
    assert send(server.port, case / "image", case / "candidates" / "auto01.dcm").returncode == 0  # re-sent
    assert server.instances() == 29 and len(server.stored_files()) == 29
    assert len(server.dispatched) == 1
    assert not list((server.home / "store").rglob(".*partial"))


def test_same_uid_with_other_content_is_kept_as_a_new_version(phantom, scp_on_each_database, tmp_path):
    server = scp_on_each_database()
    original = sorted((phantom / "case001" / "image").iterdir())[0]
    changed = pydicom.dcmread(original)
    changed.SeriesDescription = "corrected"
    changed.save_as(tmp_path / "changed.dcm")
    assert send(server.port, original).returncode == 0
    assert send(server.port, tmp_path / "changed.dcm").returncode == 0
    names = sorted(p.name for p in server.stored_files())
    uid = pydicom.dcmread(original).SOPInstanceUID
    assert names == [f"{uid}.dcm", f"{uid}.v2.dcm"]
    assert pydicom.dcmread(server.stored_files()[0]).get("SeriesDescription") != "corrected"


def test_an_instance_without_study_uid_gets_a_dataset_mismatch_status_and_is_not_stored(phantom, scp):
    server = scp()
    dataset = pydicom.dcmread(sorted((phantom / "case001" / "image").iterdir())[0])
    del dataset.StudyInstanceUID
    assert _store_with_pynetdicom(server.port, dataset) == DATASET_MISMATCH
    assert server.instances() == 0 and server.stored_files() == []


def test_a_uid_that_would_escape_the_store_is_refused(phantom, scp):
    server = scp()
    dataset = pydicom.dcmread(sorted((phantom / "case001" / "image").iterdir())[0])
    dataset.SeriesInstanceUID = "../../etc"
    assert _store_with_pynetdicom(server.port, dataset) == DATASET_MISMATCH
    assert server.stored_files() == []


def test_below_the_free_disk_threshold_instances_get_out_of_resources(phantom, scp):
    server = scp(min_free_disk_mb=1e12)
    result = send(server.port, phantom / "case001" / "image")
    assert result.returncode != 0 or "Out of Resources" in result.stderr + result.stdout
    dataset = pydicom.dcmread(sorted((phantom / "case001" / "image").iterdir())[0])
    assert _store_with_pynetdicom(server.port, dataset) == OUT_OF_RESOURCES
    assert server.instances() == 0 and server.stored_files() == []


def test_a_file_that_is_not_dicom_cannot_be_understood(tmp_path):
    sessions = open_database(f"sqlite:///{tmp_path / 'db.sqlite'}")
    bad = tmp_path / "bad.dcm"
    bad.write_bytes(b"\0" * 128 + b"DICM" + b"garbage" * 10)
    with pytest.raises(StoreError) as error:
        Store(tmp_path / "store", sessions).ingest(bad)
    assert error.value.status == CANNOT_UNDERSTAND


def test_callers_outside_the_allow_list_or_from_another_host_are_rejected(scp):
    server = scp(allowed_callers=[AllowedCaller(ae_title="PACS"),
                                  AllowedCaller(ae_title="TPS", hosts=["10.9.9.9"])])

    def echo(calling_ae: str) -> subprocess.CompletedProcess:
        return subprocess.run([dcmtk("echoscu"), "-aet", calling_ae, "-aec", "CONTOURQA", "127.0.0.1",
                               str(server.port)], capture_output=True, text=True, timeout=30)
    assert echo("PACS").returncode == 0
    for refused in ("OTHER", "TPS"):  # TPS is allowed only from 10.9.9.9
        result = echo(refused)
        assert result.returncode != 0 and "Calling AE Title Not Recognized" in result.stderr


def test_eight_concurrent_associations_store_every_instance_once(phantom, scp_on_each_database, tmp_path):
    server = scp_on_each_database()
    studies = [clone_study(phantom / "case001", tmp_path / f"s{n}") for n in range(8)]
    senders = [subprocess.Popen([dcmtk("storescu"), "-R", "+sd", "-aet", "PACS", "-aec", "CONTOURQA", "127.0.0.1",
                                 str(server.port), str(s)], env=DCMTK_ENV) for s in studies]
    assert [p.wait(timeout=120) for p in senders] == [0] * 8
    assert server.instances() == 8 * 29 and len(server.stored_files()) == 8 * 29
    assert len(server.dispatched) == 8 == len(set(server.dispatched))


def test_a_restarted_assembler_resumes_waiting_cases_from_the_database(phantom, scp, tmp_path):
    server = scp()
    case = phantom / "case001"
    assert send(server.port, case / "candidates" / "auto01.dcm").returncode == 0
    server.close()
    again = scp()  # same home: same database and store
    assert send(again.port, case / "image").returncode == 0
    assert again.dispatched == [pydicom.dcmread(case / "candidates" / "auto01.dcm").SOPInstanceUID]


def test_a_seg_waits_for_the_images_its_frames_derive_from(phantom, scp):
    server = scp()
    case = phantom / "case001"
    assert send(server.port, case / "candidates" / "auto01_binary_seg.dcm").returncode == 0
    with server.sessions() as session:
        (opened,) = session.scalars(select(Case)).all()
    assert opened.kind == "SEG" and opened.state == "waiting"
    assert send(server.port, case / "image").returncode == 0
    assert len(server.dispatched) == 1


@pytest.fixture
def certificates(tmp_path) -> dict[str, Path]:
    """A CA and a server and a client certificate made with openssl."""
    if shutil.which("openssl") is None:
        pytest.fail("openssl is not installed")
    d = tmp_path / "tls"
    d.mkdir()

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=d)
    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
        "-subj", "/CN=test-ca")
    for name in ("server", "client"):
        run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr",
            "-subj", "/CN=localhost")
        run("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", f"{name}.pem", "-days", "2")
    return {p.stem + p.suffix: p for p in d.iterdir()}


def test_tls_requires_a_client_certificate_signed_by_the_configured_ca(scp, certificates):
    from contourqa.daemon.config import TlsSettings
    server = scp(tls=TlsSettings(certificate=certificates["server.pem"], key=certificates["server.key"],
                                 ca=certificates["ca.pem"]))

    def echo(with_client_certificate: bool) -> bool:
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(certificates["ca.pem"]))
        context.check_hostname = False
        if with_client_certificate:
            context.load_cert_chain(certificates["client.pem"], certificates["client.key"])
        ae = AE(ae_title="PACS")
        ae.add_requested_context(Verification)
        assoc = ae.associate("127.0.0.1", server.port, ae_title="CONTOURQA", tls_args=(context, None))
        ok = assoc.is_established and assoc.send_c_echo().Status == 0
        if assoc.is_established:
            assoc.release()
        return ok
    assert echo(with_client_certificate=True)
    assert not echo(with_client_certificate=False)


def test_retention_removes_old_studies_but_not_those_a_case_still_needs(phantom, scp_on_each_database, tmp_path):
    from contourqa.daemon.config import Settings
    from contourqa.daemon.scheduler import apply_retention
    server = scp_on_each_database()
    case = phantom / "case001"
    assert send(server.port, case / "candidates" / "auto01.dcm").returncode == 0  # a waiting case
    other = clone_study(case, tmp_path / "other")
    assert send(server.port, *sorted(other.iterdir())[:-1]).returncode == 0  # images only
    settings = Settings(home=tmp_path, scheduler={"retention_days": 1e-9})
    assert apply_retention(settings, server.sessions) == 1
    remaining = {p.parent.parent.name for p in server.stored_files()}
    assert remaining == {str(pydicom.dcmread(case / "candidates" / "auto01.dcm").StudyInstanceUID)}
    assert server.instances() == 1
