"""`pneumonia-cxr serve`: FastAPI over `ModelService`, errors as JSON, uploads kept in memory.

Endpoints: GET /health (alive), GET /ready (model loaded), GET /v1/model, POST /v1/predict
(multipart, field `file`, repeatable; `?gradcam=true` adds overlays), GET / (the page),
/docs (OpenAPI). Every error body is {"error": ..., "detail": ...}.

Off loopback the server needs an access token (`check_exposure`): then every route except
/health and the page's own files (they hold no data and no model information; the page asks
for the token) answers 401 without `Authorization: Bearer <token>`. TLS is a reverse proxy's
job (nginx, Caddy), not this process's.
"""

from __future__ import annotations

import ipaddress
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from importlib import resources
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.formparsers import MultiPartException, MultiPartParser

from pneumonia_cxr import __version__
from pneumonia_cxr.serve.service import BusyError, ModelService, ServeConfig

FILE_FIELD = "file"
TOKEN_ENV_VAR = "PNEUMONIA_CXR_API_TOKEN"
PUBLIC_PATHS = ("/health", "/", "/static/")
"""Open without a token: liveness, and the page that asks for the token."""
_MULTIPART_SCHEMA = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {
                        FILE_FIELD: {
                            "type": "array",
                            "items": {"type": "string", "format": "binary"},
                            "description": "one or more chest X-rays (JPEG, PNG or DICOM)",
                        }
                    },
                    "required": [FILE_FIELD],
                }
            }
        },
    }
}


class ApiError(Exception):
    def __init__(self, status: int, error: str, detail: str, **extra: Any) -> None:
        super().__init__(detail)
        self.status, self.error, self.detail, self.extra = status, error, detail, extra


def _error(status: int, error: str, detail: str, **extra: Any) -> JSONResponse:
    return JSONResponse({"error": error, "detail": detail, **extra}, status_code=status)


def _parser_class(max_bytes: int) -> type[MultiPartParser]:
    """Starlette's multipart parser with files kept in memory up to the upload limit (the
    body is already capped at that size, so nothing ever spills into a temporary file)."""
    return type("InMemoryMultiPartParser", (MultiPartParser,), {"spool_max_size": max_bytes + 1})


async def _capped_body(request: Request, max_bytes: int) -> AsyncIterator[bytes]:
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > max_bytes:
        raise ApiError(413, "upload too large", _too_large(int(declared), max_bytes))
    received = 0
    async for chunk in request.stream():
        received += len(chunk)
        if received > max_bytes:
            raise ApiError(413, "upload too large", _too_large(received, max_bytes))
        yield chunk


def _too_large(size: int, limit: int) -> str:
    return (
        f"the upload is {size / 2**20:.1f} MB or more; the limit is {limit / 2**20:.0f} MB "
        "(`pneumonia-cxr serve --max_upload_mb N` raises it)"
    )


async def _read_files(request: Request, config: ServeConfig) -> list[tuple[str, bytes]]:
    content_type = request.headers.get("content-type", "")
    if not content_type.startswith("multipart/form-data"):
        raise ApiError(
            400, "no file", f"send multipart/form-data with one or more '{FILE_FIELD}' fields"
        )
    parser = _parser_class(config.max_upload_bytes)(
        request.headers,
        _capped_body(request, config.max_upload_bytes),
        max_files=config.max_files,
        max_fields=config.max_files,
        max_part_size=config.max_upload_bytes,
    )
    try:
        form = await parser.parse()
    except MultiPartException as error:
        raise ApiError(400, "malformed upload", str(error)) from error
    try:
        uploads = [u for u in form.getlist(FILE_FIELD) if hasattr(u, "read")]
        if not uploads:
            raise ApiError(400, "no file", f"the form has no '{FILE_FIELD}' field with a file")
        return [(u.filename or f"upload-{i + 1}", await u.read()) for i, u in enumerate(uploads)]
    finally:
        await form.close()


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


def check_exposure(host: str, token: str | None) -> None:
    """Refuse to listen beyond this computer without an access token."""
    if not is_loopback(host) and not token:
        raise PermissionError(
            f"--host {host} makes the server reachable from the network: set an access token "
            f"in the environment variable {TOKEN_ENV_VAR} (or --api_token, which other users "
            "of this machine can read in the process list). Put TLS in a reverse proxy "
            "(nginx, Caddy) in front of it; this server speaks plain HTTP."
        )


def _authorized(request: Request, token: str) -> bool:
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    return scheme.lower() == "bearer" and secrets.compare_digest(given.encode(), token.encode())


def _public(path: str) -> bool:
    return path in PUBLIC_PATHS or path.startswith("/static/")


def create_app(config: ServeConfig | None = None) -> FastAPI:
    config = config or ServeConfig()
    service = ModelService(config)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        service.start()
        yield
        service.shutdown()

    app = FastAPI(
        title="pneumonia-cxr",
        version=__version__,
        description="Pneumonia detection in pediatric chest X-rays. A research tool, not a "
        "medical device: it does not give a diagnosis.",
        lifespan=lifespan,
    )
    app.state.service = service

    if config.api_token:
        token = config.api_token

        @app.middleware("http")
        async def require_token(
            request: Request, call_next: Callable[[Request], Awaitable[Response]]
        ) -> Response:
            if _public(request.url.path) or _authorized(request, token):
                return await call_next(request)
            return _error(
                401,
                "unauthorized",
                "this server needs its access token: send 'Authorization: Bearer <token>'",
            )

    @app.exception_handler(ApiError)
    async def api_error(request: Request, error: ApiError) -> JSONResponse:
        return _error(error.status, error.error, error.detail, **error.extra)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        return _error(error.status_code, "http error", str(error.detail))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, error: RequestValidationError) -> JSONResponse:
        return _error(422, "invalid request", str(error.errors()))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, error: Exception) -> JSONResponse:
        return _error(500, "internal error", f"{type(error).__name__}: {error}")

    def require_ready() -> None:
        if not service.ready:
            detail = service.load_error or "the model is still loading; retry in a few seconds"
            raise ApiError(503, "not ready", detail)

    @app.get("/health", summary="The process is alive (never waits for the model)")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/ready", summary="The model is loaded and requests will be answered")
    async def ready() -> dict[str, Any]:
        require_ready()
        return {"ready": True, "model_path": str(service.model_path)}

    @app.get("/v1/model", summary="Which model answers, and how it decides")
    async def model_info() -> dict[str, Any]:
        require_ready()
        return service.info()

    @app.post(
        "/v1/predict",
        summary="P(PNEUMONIA), label, OOD flag (and Grad-CAM) for each uploaded image",
        openapi_extra=_MULTIPART_SCHEMA,
    )
    async def predict(request: Request, gradcam: bool = False) -> JSONResponse:
        require_ready()
        files = await _read_files(request, config)
        try:
            results = await service.predict(files, gradcam)
        except BusyError as error:
            raise ApiError(503, "busy", f"{error}; retry shortly") from error
        failed = [r for r in results if "error" in r]
        if len(failed) == len(results):  # nothing readable: the request itself failed
            first = failed[0]
            return _error(
                first.pop("status"),
                "unreadable image",
                f"{first['name']}: {first['error']}",
                results=[{k: v for k, v in r.items() if k != "status"} for r in results],
            )
        for result in failed:
            result.pop("status", None)
        return JSONResponse({"results": results})

    static = resources.files("pneumonia_cxr.serve") / "static"
    app.mount("/static", StaticFiles(directory=str(static)), name="static")

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(str(static / "index.html"))

    return app


def serve(config: ServeConfig, host: str = "127.0.0.1", port: int = 8000) -> None:
    """Run uvicorn on one process; loopback by default, a token required beyond it."""
    import uvicorn

    check_exposure(host, config.api_token)
    uvicorn.run(create_app(config), host=host, port=port, log_level="info")
