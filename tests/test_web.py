"""The node's read-only web page, end to end: dcmtk storescu -> `contourqa serve` with `web.port`, the
pages fetched over HTTP with basic auth and rendered in headless Chromium (started by the test)."""

from __future__ import annotations

import base64
import io
import subprocess
import urllib.error
import urllib.request

import numpy as np
import pytest
from PIL import Image

from conftest import headless_chromium, require_tool, run_cli
from contourqa.qa_models.predictor import default_model_dir, read_card
from node_harness import Destination, Node, approved_copy, send, wait_for

pytestmark = pytest.mark.slow
AUTH = "Basic " + base64.b64encode(b"physicist:s3cret").decode()


def fetch(url: str, auth: str | None = AUTH) -> tuple[int, str, bytes]:
    request = urllib.request.Request(url, headers={"Authorization": auth} if auth else {})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, response.headers["Content-Type"], response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.headers.get("Content-Type", ""), error.read()


@pytest.fixture(scope="module")
def served(phantom, tmp_path_factory):
    """A node with its web page on a free loopback port that has assessed one RTSTRUCT."""
    folder = tmp_path_factory.mktemp("web")
    destination = Destination(folder / "received").start()
    node = Node(folder / "home", export={"default_destination": destination.address},
                web={"port": 0, "user": "physicist", "password": "s3cret"}).start()
    case = phantom / "case001"
    assert send(node.port, case / "image", case / "candidates" / "auto01.dcm").returncode == 0
    wait_for(lambda: destination.received(), 90, "the SR")
    base = f"http://127.0.0.1:{int((node.home / 'run' / 'web.port').read_text())}"
    yield node, base
    node.stop()
    destination.stop()


def test_pages_need_the_password_and_list_todays_cases_with_filters(served):
    node, base = served
    assert fetch(base + "/", auth=None)[0] == 401
    assert fetch(base + "/", auth="Basic " + base64.b64encode(b"physicist:wrong").decode())[0] == 401
    status, kind, body = fetch(base + "/")
    page = body.decode()
    assert status == 200 and kind.startswith("text/html")
    assert page.count('<a href="/case/') == 5 and "Prostate" in page  # one line per ROI of the one case
    assert "<script" not in page and "http" not in page.replace("http-equiv", "")
    rejected = fetch(base + "/?verdict=reject")[2].decode()
    verdict_cells = rejected.count('<td class="reject">')
    assert rejected.count('<a href="/case/') == verdict_cells  # only rejected ROIs are listed
    bladder = fetch(base + "/?roi=bladder")[2].decode()
    assert bladder.count('<a href="/case/') == 1 and "Bladder" in bladder
    assert fetch(base + "/nothing")[0] == 404
    written = run_cli("report", "daily", "--config", node.home / "config.yaml")  # today's, so far
    assert written.returncode == 0, written.stderr
    index = fetch(base + "/daily/")[2].decode()
    day = written.stdout.strip().rsplit("/", 1)[1]
    assert f'href="{day}"' in index and "Contour QA summary" in fetch(base + f"/daily/{day}")[2].decode()
    assert fetch(base + "/daily/../../contourqa.sqlite")[0] == 404  # nothing outside the summaries


def test_a_case_page_shows_each_roi_with_its_contour_drawn_on_the_image(served):
    node, base = served
    page = fetch(base + "/")[2].decode()
    link = page[page.index('<a href="/case/') + 9:]
    link = link[:link.index('"')]
    status, _, body = fetch(base + link)
    case_page = body.decode()
    assert status == 200 and "state</th><td class=\"done\">done" in case_page
    assert case_page.count("<img ") == 5 and "screen slice_gaps" in case_page
    # the default model's guards in their own terms: the edge picker's spread in mm against its limit, and
    # its feature distance against the feature guard's
    card = read_card(default_model_dir())
    assert case_page.count("<th>domain</th><td>edge spread ") == 5
    assert f" mm (limit {card.domain.threshold:.2f} mm); picker feature distance " in case_page
    assert f" (limit {card.feature_guard.threshold:.1f}): " in case_page
    picture = link + "/roi/1.png"
    status, kind, png = fetch(base + picture)
    assert status == 200 and kind == "image/png"
    pixels = np.asarray(Image.open(io.BytesIO(png)))
    red = (pixels[..., 0] == 230) & (pixels[..., 1] == 30) & (pixels[..., 2] == 50)
    assert 20 < red.sum() < pixels.shape[0] * pixels.shape[1] / 4  # a drawn edge, not a filled frame
    assert pixels[..., 0][~red].std() > 10  # and the image beneath it is not blank
    assert fetch(base + link + "/roi/99.png")[0] == 404
    assert fetch(base + "/case/1.2.3.unknown")[0] == 404


def test_the_pages_render_in_headless_chromium_without_console_errors(served, tmp_path):
    node, base = served
    # the credentials in the address, as a physicist's bookmark would carry them
    authed = base.replace("http://", "http://physicist:s3cret@")
    command = headless_chromium(tmp_path / "profile")
    page = fetch(base + "/")[2].decode()
    link = page[page.index('<a href="/case/') + 9:]
    link = link[:link.index('"')]
    for path in ("/", link):
        dumped = subprocess.run([*command, "--dump-dom", authed + path], capture_output=True, text=True,
                                timeout=120)
        assert "</table>" in dumped.stdout, dumped.stderr[-2000:]
        assert "CONSOLE" not in dumped.stderr and "Uncaught" not in dumped.stderr
    shot = tmp_path / "case.png"
    subprocess.run([*command, f"--screenshot={shot}", "--window-size=1200,1600", authed + link],
                   capture_output=True, timeout=120)
    pixels = np.asarray(Image.open(shot).convert("L"))
    assert pixels.std() > 20  # text, tables and contour pictures, not a blank page


@pytest.mark.parametrize("web, message", [
    ("{user: physicist}", "web.user and web.password go together"),
    ("{tls_cert: /etc/cert.pem}", "web.tls_cert and web.tls_key go together"),
    ("{port: 70000}", "web.port"),
])
def test_a_bad_web_configuration_is_one_line(tmp_path, web, message):
    config = tmp_path / "bad.yaml"
    config.write_text(f"web: {web}\n")
    result = run_cli("web", "--config", config, "--home", tmp_path)
    assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr


def test_tls_serves_the_page_over_https_only(tmp_path):
    import ssl

    from contourqa.daemon.config import load_settings
    from contourqa.daemon.db import open_database
    from contourqa.daemon.web import start_web

    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    made = subprocess.run([require_tool("openssl"), "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                           "-subj", "/CN=127.0.0.1", "-keyout", key, "-out", cert], capture_output=True, timeout=60)
    assert made.returncode == 0, made.stderr
    settings = load_settings(None, {"home": str(tmp_path), "web.port": 0, "web.tls_cert": str(cert),
                                    "web.tls_key": str(key)})
    server = start_web(settings, open_database(settings.resolved_database_url()))
    try:
        port = server.server_address[1]
        context = ssl.create_default_context(cafile=str(cert))
        context.check_hostname = False
        with urllib.request.urlopen(f"https://127.0.0.1:{port}/", context=context, timeout=30) as response:
            assert response.status == 200 and b"Today's cases" in response.read()
        with pytest.raises((urllib.error.URLError, ConnectionError)):
            urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10).read()
    finally:
        server.shutdown()


def test_the_real_dice_and_the_audit_reports_are_on_the_page(served, phantom):
    """Last in this module: it adds an approved structure set to the node the other tests read."""
    import pydicom

    node, base = served
    auto = phantom / "case001" / "candidates" / "auto01.dcm"
    auto_id = str(pydicom.dcmread(auto, stop_before_pixels=True).SOPInstanceUID)
    approved_id = approved_copy(auto, node.home.parent / "approved.dcm")
    assert send(node.port, node.home.parent / "approved.dcm").returncode == 0
    page = wait_for(lambda: (text := fetch(base + f"/case/{auto_id}")[2].decode()).count("real Dice") == 5 and text,
                    60, "the real Dice on the case page")
    assert page.count("1.000, HD95 0.0 mm") == 5 and f'href="/case/{approved_id}"' in page

    config = node.home / "config.yaml"
    assert run_cli("audit", "add", "weekly", "--cron", "0 7 * * 1", "--config", config).returncode == 0
    ran = run_cli("audit", "run", "weekly", "--config", config)  # one day of data: nothing to compare yet
    assert ran.returncode == 0 and "not enough results" in ran.stdout
    report = ran.stdout.strip().rsplit("/", 1)[1]
    index = fetch(base + "/daily/")[2].decode()
    assert f'href="../audits/weekly/{report}"' in index
    status, kind, body = fetch(base + f"/audits/weekly/{report}")
    assert status == 200 and "Drift audit weekly" in body.decode()
    front = fetch(base + "/")[2].decode()  # each audit's latest result on the front page, linked
    assert f'href="/audits/weekly/{report}">not enough results' in front
    assert fetch(base + "/audits/weekly/..%2F..%2Fcontourqa.sqlite")[0] == 404  # nothing outside the reports
