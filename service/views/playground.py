"""The playground page at `/`: one static HTML page plus its script and stylesheet, all served by this app.

The page only talks to this app's own API (POST v1/gradients, v1/check, GET v1/models) through relative URLs,
so it works the same directly on gunicorn and behind the gateway's /grad/ prefix. docs/playground.md.
"""

from __future__ import annotations

from pathlib import Path

from flask import Blueprint, Response, send_from_directory

ASSETS = Path(__file__).parent.parent / "static" / "playground"
# Own assets only: no CDN, no inline script or style, no frames; fetch() may only reach this origin.
PAGE_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)

bp = Blueprint("playground", __name__, static_folder=ASSETS, static_url_path="/playground")


@bp.after_request
def protect(response: Response) -> Response:
    """The page and its assets carry the CSP; nosniff keeps a browser from reading them as anything else."""
    response.headers["Content-Security-Policy"] = PAGE_CSP
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "no-referrer"
    return response


@bp.get("/")
def index():
    """The playground page; its state (model, inputs, options) lives in the query string, read by playground.js."""
    return send_from_directory(ASSETS, "index.html", mimetype="text/html", max_age=0)
