"""HTML pages from the package's jinja2 templates, written atomically."""

from __future__ import annotations

import datetime as dt
from functools import cache
from importlib import resources
from pathlib import Path

import jinja2

from contourqa.qa_models.atomic import write_text_atomically


@cache
def _environment() -> jinja2.Environment:
    folder = str(resources.files("contourqa.templates"))
    return jinja2.Environment(loader=jinja2.FileSystemLoader(folder), autoescape=True)


def render_text(template: str, **context) -> str:
    """``template`` (a file in templates/) rendered with ``context`` plus ``created``."""
    created = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return _environment().get_template(template).render(created=created, **context)


def render_page(template: str, path: str | Path, **context) -> Path:
    """Render ``template`` (a file in templates/) with ``context`` plus ``created`` to ``path``."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    return write_text_atomically(path, render_text(template, **context))
