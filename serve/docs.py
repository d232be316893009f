"""/docs (Swagger UI) and /redoc from the package's own files: no CDN, no other host.

FastAPI's pages load their scripts unpinned from a public CDN, on the origin where the web
page keeps the API key in localStorage, and show nothing offline. Here the scripts are the
files vendored in ``serve/static/docs`` (versions and licences in its NOTICE), served by the
``/static`` mount, and a Content-Security-Policy keeps the pages from reaching anywhere else.
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse

from serve.settings import Settings

ASSETS = "/static/docs"
# Both pages start their library with an inline script and style; Redoc runs a blob: worker.
POLICY = (
    "default-src 'none'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; font-src 'self' data:; connect-src 'self'; worker-src 'self' blob:; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)


def _locked(page: HTMLResponse) -> HTMLResponse:
    page.headers["Content-Security-Policy"] = POLICY
    return page


def add_docs_routes(app: FastAPI, settings: Settings | None = None) -> None:
    """Add /docs and /redoc (nothing when ``settings.docs`` is off, ``--no-docs``)."""
    if settings is not None and not settings.docs:
        return
    title = f"{app.title}: API"

    def urls(request: Request) -> tuple[str, str]:
        """The schema's URL and the assets' folder, under the proxy's root path if any."""
        root = request.scope.get("root_path", "")
        return root + (app.openapi_url or "/openapi.json"), root + ASSETS

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        schema, assets = urls(request)
        return _locked(
            get_swagger_ui_html(
                openapi_url=schema,
                title=title,
                swagger_js_url=f"{assets}/swagger-ui-bundle.js",
                swagger_css_url=f"{assets}/swagger-ui.css",
                swagger_favicon_url=f"{assets}/favicon-32x32.png",
                oauth2_redirect_url=None,
                # No badge fetched from the public validator (it would send it the schema's URL).
                swagger_ui_parameters={"validatorUrl": None},
            )
        )

    @app.get("/redoc", include_in_schema=False)
    async def redoc(request: Request) -> HTMLResponse:
        schema, assets = urls(request)
        return _locked(
            get_redoc_html(
                openapi_url=schema,
                title=title,
                redoc_js_url=f"{assets}/redoc.standalone.js",
                redoc_favicon_url=f"{assets}/favicon-32x32.png",
                with_google_fonts=False,
            )
        )
