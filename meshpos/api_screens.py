"""The screens every terminal serves to a browser on its box (docs/screens.md): ``/``,
``/kds``, ``/tables`` and ``/monitor``, and their files under ``/screens/`` (the kitchen display's
and the floor plan's bundles are built from js/ by ``npm run build`` and committed).

They ship inside the package (no CDN: they work with the WAN down) and hold no data: a page
reads everything from the API with the browser's own requests, which the guard treats like any
other (meshpos/api_guard.py).  So the files themselves need no token: :data:`PUBLIC_PATHS`.
Only the files present at start are served, by exact name - no path from a request ever
reaches the filesystem.
"""

from __future__ import annotations

from pathlib import Path

from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import BaseRoute, Route

from core import errors
from meshpos.api_routing import error_response

SCREENS = Path(__file__).parent / "screens"
#: Pages by path, and the files under /screens/ (read once: the set is fixed for the process).
PAGES = {"/": "index.html", "/monitor": "monitor.html", "/kds": "kds.html", "/tables": "tables.html"}
FILES = {p.name: p for p in SCREENS.iterdir() if p.is_file() and p.suffix in (".html", ".js", ".css", ".txt")}
PUBLIC_PATHS = frozenset(PAGES) | {f"/screens/{name}" for name in FILES}
#: The pages load only this terminal's own files and talk only to its own API (a value a peer
#: wrote and the page shows cannot load or run anything); no other site may frame them.
HEADERS = {
    "Content-Security-Policy": "default-src 'self'; connect-src 'self'; img-src 'self' data:; "
                               "frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",  # revalidated: an upgraded terminal serves its new screens at once
}


def _file(name: str) -> Response:
    path = FILES.get(name)
    if path is None:
        return error_response(404, errors.NOT_FOUND, f"no screen file {name[:64]!r}")
    return FileResponse(path, headers=HEADERS)


async def _page(request: Request) -> Response:
    return _file(PAGES[request.url.path])


async def _asset(request: Request) -> Response:
    return _file(request.path_params["name"])


def screen_routes() -> list[BaseRoute]:
    return [*(Route(path, _page, methods=["GET"], include_in_schema=False) for path in PAGES),
            Route("/screens/{name}", _asset, methods=["GET"], include_in_schema=False)]
