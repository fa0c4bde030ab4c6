"""The FastAPI app: `GET /healthz`, `GET /v1/models`, `POST /v1/diagnose`, and the web page.

OpenAPI's schema is at `/openapi.json`; the interactive /docs page is off because it loads its
scripts from a CDN, and nothing here may load from outside.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any

from fastapi import FastAPI, File, Form, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException

from cadx import __version__
from cadx.diagnose.fna import RULE, SOURCE
from cadx.errors import CadxError
from cadx.io.limits import VolumeTooLargeError
from cadx.serve.connections import ConnectionLimits
from cadx.serve.guards import SLOT_KEY, AdmissionMiddleware, ErrorMiddleware, HostMiddleware
from cadx.serve.inputs import UnsupportedFileError, Upload, UploadLimits, UploadTooLargeError
from cadx.serve.jobs import (
    DiagnoseRequest,
    clear_stale_workdirs,
    parse_clinical_field,
    parse_size_mm,
    run_diagnosis,
)
from cadx.serve.pool import InferencePool, PoolFullError
from cadx.serve.registry import ServedModel

STATIC_DIR = Path(__file__).parent / "static"
DIAGNOSE_PATH = "/v1/diagnose"
log = logging.getLogger("cadx.serve")


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def _status_of(exc: CadxError) -> int:
    if isinstance(exc, UploadTooLargeError | VolumeTooLargeError):
        return 413
    if isinstance(exc, UnsupportedFileError):
        return 415
    return 422


def _validation_message(exc: RequestValidationError) -> str:
    problems = []
    for error in exc.errors():
        field = ".".join(str(part) for part in error.get("loc", ())[1:]) or "request"
        problems.append(f"{field}: {error.get('msg', 'invalid')}")
    return "; ".join(problems)


def _upload(file: UploadFile | None) -> Upload | None:
    # A browser sends an empty, nameless part for a file input left blank.
    if file is None or not file.filename:
        return None
    return Upload(file.filename, file.file)


def create_app(models: dict[str, ServedModel], *, token: str | None = None,
               limits: UploadLimits | None = None, workers: int = 1,
               queue_size: int = 4, allowed_hosts: list[str] | None = None,
               body_timeout_s: float = ConnectionLimits.body_timeout_s) -> FastAPI:
    """The service for the loaded `models`; bearer `token` required on /v1 when given.

    The token, the `?model=` of a diagnosis and a free pool slot are checked on the request's
    headers, before its upload is read (`guards.AdmissionMiddleware`); an upload silent for
    `body_timeout_s` is answered 408. With `allowed_hosts`, requests whose Host header names
    another host get a 400 (`serve` gives this machine's names in tokenless loopback mode).
    Every error is `{"error": ...}`; an unexpected one is a 500 naming a request id. At
    start-up, the temporary folders that services killed mid-request left behind are removed.
    """
    limits = limits or UploadLimits()
    pool = InferencePool(workers, queue_size)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        removed = clear_stale_workdirs()
        if removed:
            log.info("removed %d temporary folder(s) left by stopped services", removed)
        yield
        pool.shutdown()

    app = FastAPI(title="cadx diagnosis service", version=__version__, docs_url=None,
                  redoc_url=None, lifespan=lifespan,
                  description="Upload a patient's images, get the model's score, decision, "
                              "heat map, (thyroid models) FNA advice and (models with a "
                              "fusion model) the score fused with clinical values.")
    app.state.pool = pool
    # The last added runs first: errors -> host -> token, size, model, slot -> the routes.
    app.add_middleware(AdmissionMiddleware, token=token, max_bytes=limits.max_request_bytes,
                       diagnose_path=DIAGNOSE_PATH, model_ids=lambda: list(models), pool=pool,
                       body_timeout_s=body_timeout_s)
    if allowed_hosts is not None:
        app.add_middleware(HostMiddleware, allowed_hosts=allowed_hosts)
    app.add_middleware(ErrorMiddleware)

    @app.exception_handler(HTTPException)
    async def http_error(_: Request, exc: HTTPException) -> JSONResponse:
        return _error(exc.status_code, str(exc.detail), exc.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        return _error(422, _validation_message(exc))

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html")

    @app.get("/healthz", summary="Liveness: models loaded and requests in the pool")
    async def healthz() -> dict[str, Any]:
        return {"status": "ok", "models": len(models), "jobs": pool.admitted,
                "capacity": pool.workers + pool.queue_size}

    @app.get("/v1/models", summary="The loaded models, upload limits and the FNA rule")
    async def list_models() -> dict[str, Any]:
        return {"models": [m.info() for m in models.values()],
                "limits": {"max_request_bytes": limits.max_request_bytes,
                           "max_file_bytes": limits.max_file_bytes,
                           "max_files": limits.max_files,
                           "max_voxels": limits.volume_limits().max_voxels},
                "fna_rule": {"rule": RULE, "source": SOURCE}}

    @app.post(DIAGNOSE_PATH, summary="Diagnose one patient's upload with one model")
    async def diagnose(
        http_request: Request,
        files: Annotated[list[UploadFile], File(
            description="CT: a NIfTI volume (+ organ_mask) or one zip holding both; "
                        "image models: one or more PNG/JPEG images")],
        model_query: Annotated[str | None, Query(
            alias="model", description="model id from GET /v1/models; given here it is "
                                       "checked before the upload is read")] = None,
        model_form: Annotated[str | None, Form(
            alias="model", description="model id, if not given as ?model=")] = None,
        organ_mask: Annotated[UploadFile | None, File(
            description="organ mask on the volume's grid (CT models)")] = None,
        lesion_size_mm: Annotated[str | None, Form(
            description="largest nodule diameter in mm (thyroid FNA advice)")] = None,
        clinical: Annotated[list[str] | None, Form(
            description="models with a fusion model (2D or CT): the patient's clinical values as "
                        "NAME=VALUE[,NAME=VALUE...], e.g. age=54,device=GE (the field may be "
                        "repeated); the columns are in GET /v1/models (`fusion`)")] = None,
    ) -> JSONResponse:
        started = time.perf_counter()
        if model_query and model_form and model_query != model_form:
            return _error(422, f"model: ?model={model_query[:80]!r} and the form's "
                               f"{model_form[:80]!r} differ")
        model = model_query or model_form
        if not model:
            return _error(422, "model: give the model id as ?model=ID (or a form field)")
        served = models.get(model)
        if served is None:
            return _error(404, f"unknown model {model[:80]!r}; loaded: {', '.join(models)}")
        try:
            request = DiagnoseRequest(served, [u for f in files if (u := _upload(f))],
                                      _upload(organ_mask), parse_size_mm(lesion_size_mm),
                                      parse_clinical_field(clinical, served))
            result = await pool.run(run_diagnosis, request, limits,
                                    slot=http_request.scope.get("state", {}).get(SLOT_KEY))
        except PoolFullError as exc:
            log.warning("diagnose model=%s refused: pool full", served.model_id)
            return _error(503, str(exc), {"Retry-After": str(exc.retry_after_s)})
        except CadxError as exc:
            # Only the error's class is logged: messages name the user's files.
            log.info("diagnose model=%s failed: %s", served.model_id, type(exc).__name__)
            return _error(_status_of(exc), str(exc))
        log.info("diagnose model=%s files=%d ok in %.2f s", served.model_id, len(files),
                 time.perf_counter() - started)
        return JSONResponse(result)

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    return app


def serve(models_dir: str | Path, host: str = "127.0.0.1", port: int = 8000, *,
          token_file: str | Path | None = None, workers: int = 1, queue_size: int = 4,
          max_upload_mb: float = 512, max_voxels: int | None = None,
          connections: ConnectionLimits | None = None, require_signed: bool = False,
          signing_key_file: str | Path | None = None) -> None:
    """Load every bundle of `models_dir` and run the service with uvicorn until interrupted.

    Without a token the service listens on loopback only and answers only requests addressed
    to this machine's names (Host header), against DNS rebinding. `connections` bounds the
    open connections and how long a request's headers and upload may take. With
    `require_signed`, every bundle must be signed (`cadx sign`) with the key of
    `signing_key_file` or $CADX_SIGNING_KEY, or the service does not start.
    """
    import uvicorn

    from cadx.bundle import load_signing_key, signing_key_id
    from cadx.serve.auth import check_bind, load_token, loopback_host_names
    from cadx.serve.registry import load_model_folder

    connections = connections or ConnectionLimits()
    token = load_token(token_file)
    check_bind(host, token)
    signing_key = load_signing_key(signing_key_file) if require_signed else None
    models = load_model_folder(models_dir, signing_key)
    max_bytes = int(max_upload_mb * 2**20)
    limits = UploadLimits(max_request_bytes=max_bytes, max_file_bytes=max_bytes,
                          max_voxels=max_voxels)
    app = create_app(models, token=token, limits=limits, workers=workers, queue_size=queue_size,
                     allowed_hosts=None if token else loopback_host_names(host),
                     body_timeout_s=connections.body_timeout_s)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    log.info("%d model(s) loaded from %s: %s; token %s; signatures %s", len(models),
             models_dir, ", ".join(models), "required" if token else "off (loopback only)",
             f"required (key id {signing_key_id(signing_key)})" if signing_key else "not checked")
    uvicorn.run(app, host=host, port=port, log_level="info", **connections.uvicorn_options())
