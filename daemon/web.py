"""The node's read-only web page (`web.port`): today's cases with verdicts and reasons, one page per case
with a mid-slice picture of each contour drawn server-side, and the daily summaries. Standard library
HTTP server in a thread of the SCP process; loopback by default; optional basic auth and TLS; no scripts."""

from __future__ import annotations

import base64
import hmac
import io
import logging
import re
import ssl
import threading
from datetime import datetime, timezone
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, quote, unquote, urlparse

import numpy as np
from scipy import ndimage
from sqlalchemy.orm import sessionmaker

from contourqa.qa_models.assessment import AssessConfig, load_structure, structure_masks
from contourqa.qa_models.atomic import write_text_atomically
from contourqa.qa_models.errors import ContourQAError
from contourqa.reporting.html import render_text

from .case_runner import load_case_images
from .config import Settings
from .audits import NAME as AUDIT_NAME
from .audits import latest_audit_results
from .db import Case, Instance
from .results import case_detail, list_results

log = logging.getLogger(__name__)

VERDICTS = ("accept", "review", "reject", "failed")
DAILY_FILE = re.compile(r"^(index|\d{4}-\d{2}-\d{2})\.html$")
AUDIT_FILE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{4}\.html$")


def contour_picture(sessions: sessionmaker, case_id: str, roi_number: int) -> bytes | None:
    """PNG of the slice where the ROI is largest, windowed to its 1st-99th percentile, with the contour's
    edge in red; None when the case, its images or the ROI cannot be found."""
    from PIL import Image

    with sessions() as session:
        case = session.get(Case, case_id)
        structure = session.get(Instance, case.structure_instance_id) if case else None
    if case is None or structure is None or case.image_series_uid is None:
        return None
    try:
        dataset = load_structure(structure.path)
        series = load_case_images(sessions, case, dataset)
        masks = {mask.number: mask.mask for mask, _ in structure_masks(dataset, series, AssessConfig())}
    except ContourQAError:
        return None
    mask = masks.get(roi_number)
    if mask is None:
        return None
    k = int(np.argmax(mask.sum(axis=(1, 2)))) if mask.any() else mask.shape[0] // 2
    image = series.array[k].astype(np.float32)
    low, high = np.percentile(image, (1, 99))
    grey = (np.clip((image - low) / max(high - low, 1e-6), 0, 1) * 255).astype(np.uint8)
    rgb = np.stack([grey] * 3, axis=-1)
    edge = mask[k] & ~ndimage.binary_erosion(mask[k])
    rgb[edge] = (230, 30, 50)
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="PNG")
    return buffer.getvalue()


class _Handler(BaseHTTPRequestHandler):
    server_version = "contourqa"
    settings: Settings
    sessions: sessionmaker

    def log_message(self, format: str, *args) -> None:  # requests carry case IDs only; at debug level
        log.debug("web: " + format, *args)

    def do_GET(self) -> None:
        if not self._authorised():
            self.send_response(HTTPStatus.UNAUTHORIZED)
            self.send_header("WWW-Authenticate", 'Basic realm="contourqa"')
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        url = urlparse(self.path)
        parts = [unquote(p) for p in url.path.strip("/").split("/") if p]
        try:
            if not parts:
                self._cases(parse_qs(url.query))
            elif parts[0] == "case" and len(parts) == 2:
                self._case(parts[1])
            elif parts[0] == "case" and len(parts) == 4 and parts[2] == "roi" and parts[3].endswith(".png"):
                self._picture(parts[1], parts[3][:-4])
            elif parts[0] == "daily" and len(parts) <= 2:
                self._daily(parts[1] if len(parts) == 2 else "index.html")
            elif parts[0] == "audits" and len(parts) == 3:
                self._audit(parts[1], parts[2])
            else:
                self._send_text(HTTPStatus.NOT_FOUND, "not found")
        except BrokenPipeError:
            pass

    def _authorised(self) -> bool:
        web = self.settings.web
        if not (web.user and web.password):
            return True
        expected = base64.b64encode(f"{web.user}:{web.password}".encode()).decode()
        given = self.headers.get("Authorization", "").removeprefix("Basic ").strip()
        return hmac.compare_digest(given, expected)

    def _cases(self, query: dict[str, list[str]]) -> None:
        verdict = query.get("verdict", [None])[0]
        verdict = verdict if verdict in VERDICTS else None
        roi = (query.get("roi", [""])[0] or "").strip() or None
        today = datetime.now(timezone.utc).replace(tzinfo=None, hour=0, minute=0, second=0, microsecond=0)
        since = today if query.get("all", ["0"])[0] != "1" else None
        with self.sessions() as session:
            rows = list_results(session, since, verdict, roi)
        self._send_html(render_text("web_cases.html.j2", rows=rows, verdict=verdict, roi=roi or "",
                                    verdicts=VERDICTS, all_days=since is None, quote=quote,
                                    audits=latest_audit_results(self.sessions)))

    def _case(self, case_id: str) -> None:
        with self.sessions() as session:
            detail = case_detail(session, case_id)
        if detail is None:
            self._send_text(HTTPStatus.NOT_FOUND, f"no case {case_id}")
            return
        self._send_html(render_text("web_case.html.j2", case=detail, quote=quote))

    def _picture(self, case_id: str, roi_number: str) -> None:
        picture = contour_picture(self.sessions, case_id, int(roi_number)) if roi_number.isdigit() else None
        if picture is None:
            self._send_text(HTTPStatus.NOT_FOUND, "no picture")
            return
        self._send(HTTPStatus.OK, "image/png", picture)

    def _daily(self, name: str) -> None:
        path = self.settings.reports_dir / "daily" / name
        if not DAILY_FILE.match(name) or not path.is_file():  # the pattern keeps requests inside the folder
            self._send_text(HTTPStatus.NOT_FOUND, "no such summary")
            return
        self._send(HTTPStatus.OK, "text/html; charset=utf-8", path.read_bytes())

    def _audit(self, name: str, report: str) -> None:
        path = self.settings.reports_dir / "audits" / name / report
        if not (AUDIT_NAME.match(name) and AUDIT_FILE.match(report)) or not path.is_file():
            self._send_text(HTTPStatus.NOT_FOUND, "no such audit report")
            return
        self._send(HTTPStatus.OK, "text/html; charset=utf-8", path.read_bytes())

    def _send_html(self, text: str) -> None:
        self._send(HTTPStatus.OK, "text/html; charset=utf-8", text.encode())

    def _send_text(self, status: HTTPStatus, text: str) -> None:
        self._send(status, "text/plain; charset=utf-8", text.encode())

    def _send(self, status: HTTPStatus, content_type: str, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)


def start_web(settings: Settings, sessions: sessionmaker) -> ThreadingHTTPServer:
    """Serve the pages in a daemon thread; the bound port is written to ``run/web.port``."""
    handler = type("Handler", (_Handler,), {"settings": settings, "sessions": sessions})
    server = ThreadingHTTPServer((settings.web.bind, settings.web.port), handler)
    if settings.web.tls_cert:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(settings.web.tls_cert, settings.web.tls_key)
        server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, name="web", daemon=True).start()
    port = server.server_address[1]
    (settings.home / "run").mkdir(parents=True, exist_ok=True)
    write_text_atomically(settings.home / "run" / "web.port", f"{port}\n")  # never read half-written
    log.info("web page on %s://%s:%d/", "https" if settings.web.tls_cert else "http", settings.web.bind, port)
    return server
