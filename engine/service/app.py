"""The HTTP routes (OpenAPI at /docs) and their errors in plain words.

``create_app`` takes an already loaded model (``engine.analysis.load_model``, as every other
command loads one) and the settings; the routes only parse and check their form fields, then
hand the upload to a worker (engine.service.jobs). Error responses are ``{"detail": "..."}``:
422 with the reason the viewer would show for a file Lantern cannot analyse, 413 / 401 / 421 /
503 from the gate (engine.service.gate).
"""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager
from typing import Annotated

from fastapi import FastAPI, File, Form, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse

from engine.analysis import LoadedModel
from engine.cam import get_method
from engine.errors import LanternError
from engine.exports.dicom_objects import parse_kinds
from engine.service.docs_page import docs_html
from engine.service.gate import ServiceGate
from engine.service.jobs import Analyst, ExplainChoice
from engine.service.pool import WorkerPool
from engine.service.records import OUTPUTS, model_description
from engine.service.settings import ServiceSettings
from engine.service.uploads import PrivateFolder
from engine.version import lantern_version

log = logging.getLogger("lantern.service")
FIELD_HINTS = {
    "/classify": "POST /classify takes one DICOM, PNG, JPEG or TIFF file in the multipart field 'file' "
                 "(and optionally 'frame')",
    "/classify/batch": "POST /classify/batch takes files in the multipart field 'files', repeated once per "
                       "file (and optionally 'frame')",
    "/explain": "POST /explain takes one file in the multipart field 'file' (and optionally 'frame', "
                "'methods', 'classes', 'output', 'dicom')",
}
# What the gate and the handlers below answer besides 200, for the OpenAPI document.
REFUSALS = {
    401: {"description": "no or wrong bearer token (a service started with --token-file)"},
    413: {"description": "the upload is larger than --max-upload-mb"},
    421: {"description": "a service without token was addressed by a name other than loopback"},
    422: {"description": "a file Lantern cannot analyse (the reason in plain words), or wrong form fields"},
    503: {"description": "every worker busy and the queue full: try again after Retry-After seconds"},
}
FileField = Annotated[UploadFile, File(description="one DICOM, PNG, JPEG or TIFF file")]
FrameField = Annotated[int, Form(ge=0, description="frame of a multi-frame file, from 0")]
FilesField = Annotated[list[UploadFile], File(description="one or more files, each in a field named 'files'")]
MethodsField = Annotated[str, Form(description="comma-separated: gradcam, gradcam++, layercam")]
ClassesField = Annotated[str, Form(description="'predicted', 'all', or class names / numbers from 0, comma-separated")]
OutputField = Annotated[str, Form(description="comma-separated: png (overlay), array (float32 map), dicom (objects)")]
DicomField = Annotated[str, Form(description="with output dicom, comma-separated: sc (secondary capture), pm "
                                             "(parametric maps), sr (structured report)")]


class ServiceFailure(Exception):
    """An analysis failed in a way Lantern has no plain words for (a bug): 500."""


def _words(values: str) -> list[str]:
    return [v.strip() for v in values.split(",") if v.strip()]


def explain_choice(model: LoadedModel, methods: str, classes: str, output: str, dicom: str) -> ExplainChoice:
    """The form's comma-separated choices, checked; a LanternError (422) says what is wrong."""
    try:
        chosen_methods = tuple(dict.fromkeys(get_method(m).name for m in _words(methods)))
    except ValueError as exc:
        raise LanternError(str(exc)) from exc
    if not chosen_methods:
        raise LanternError("'methods' names no method (e.g. gradcam)")
    names = model.bundle.classes
    words = _words(classes)
    if words in ([], ["predicted"]):
        chosen_classes = None
    elif words == ["all"]:
        chosen_classes = tuple(range(len(names)))
    else:
        unknown = [w for w in words if w not in names and not (w.isdigit() and int(w) < len(names))]
        if unknown:
            raise LanternError(f"this model has no class {', '.join(unknown)} (its classes: {', '.join(names)}, "
                               "by name or number from 0; or 'predicted' or 'all')")
        chosen_classes = tuple(dict.fromkeys(names.index(w) if w in names else int(w) for w in words))
    outputs = frozenset(_words(output))
    if not outputs or outputs - set(OUTPUTS):
        raise LanternError(f"'output' takes one or more of {', '.join(OUTPUTS)}, comma-separated, not '{output}'")
    return ExplainChoice(chosen_methods, chosen_classes, outputs, parse_kinds(dicom))


def create_app(model: LoadedModel, settings: ServiceSettings) -> FastAPI:
    model.bundle.require_single_input("the service")  # its uploads are one image each
    pool = WorkerPool(settings.workers, settings.queue)
    folder = PrivateFolder()
    analyst = Analyst(model, folder)

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        try:
            yield
        finally:  # also on Ctrl-C: no upload outlives the service
            pool.shutdown()
            folder.remove()

    # docs_url=None: FastAPI's page would load Swagger UI from a CDN; /docs below is self-contained.
    app = FastAPI(title="Lantern", version=lantern_version(), lifespan=lifespan, docs_url=None, redoc_url=None,
                  description="Lantern's analysis of medical images over HTTP: probabilities, MC-dropout "
                              "uncertainty, the out-of-distribution check and Grad-CAM-family maps. "
                              "Not a medical device; not for primary diagnosis.")
    app.add_middleware(ServiceGate, pool=pool, max_body=settings.max_upload_bytes, token=settings.token)

    async def in_pool(request: Request, job, *args) -> JSONResponse:
        try:
            # JSONResponse as it is: the records are plain JSON already, and FastAPI's own encoding
            # would walk every base64 string of a map again.
            return JSONResponse(await pool.run(job, *args))
        except LanternError:
            raise
        except Exception as exc:  # the type only: a message could quote the file's content
            log.error("request %s failed: %s", request.state.request_id, type(exc).__name__)
            raise ServiceFailure from exc

    @app.exception_handler(LanternError)
    async def unreadable(_request: Request, exc: LanternError) -> JSONResponse:
        return JSONResponse({"detail": exc.reason}, status_code=422)

    @app.exception_handler(ServiceFailure)
    async def failed(request: Request, _exc: ServiceFailure) -> JSONResponse:
        return JSONResponse({"detail": f"the analysis failed unexpectedly; the service log has request "
                                       f"{request.state.request_id}"}, status_code=500)

    @app.exception_handler(RequestValidationError)
    async def wrong_fields(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = []
        for error in exc.errors():
            field = error["loc"][-1] if error.get("loc") else "request"
            if error["type"] == "missing":
                problems.append(f"the form field '{field}' is missing")
            elif "Expected UploadFile" in error["msg"]:
                problems.append(f"the form field '{field}' must be a file (a multipart part with a filename), "
                                "not text")
            else:
                problems.append(f"the form field '{field}': {error['msg']}")
        hint = FIELD_HINTS.get(request.url.path)
        detail = "; ".join(problems) + (f". {hint}" if hint else "")
        # Only where and what: a validation error's "input" would echo what the client sent.
        errors = [{"loc": list(e.get("loc", ())), "type": e["type"], "msg": e["msg"]} for e in exc.errors()]
        return JSONResponse({"detail": detail, "errors": errors}, status_code=422)

    @app.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        return HTMLResponse(docs_html(app.openapi()))

    @app.get("/healthz", summary="Is the service up, and how busy")
    async def healthz() -> dict:
        return {"status": "ok", "model": model.bundle.name, "engine": model.engine, "workers": pool.workers,
                "capacity": pool.capacity, "admitted": pool.admitted}

    @app.get("/model", summary="The model: classes, engine, intended use, model card, calibration, checks")
    async def describe_model() -> dict:
        return model_description(model)

    @app.post("/classify", summary="Classify one image: probabilities, uncertainty, input check", responses=REFUSALS,
              description="The result is a `lantern.result/1` record, as `lantern-engine explain` writes "
                          "to result.json (without maps). 422 with the reason when the file is no image "
                          "Lantern can read.")
    async def classify(request: Request, file: FileField, frame: FrameField = 0) -> JSONResponse:
        return await in_pool(request, analyst.classify, file.file, frame)

    @app.post("/classify/batch", summary=f"Classify up to {settings.max_batch_files} images: a result or an "
                                         "error per file", responses=REFUSALS)
    async def classify_batch(request: Request, files: FilesField, frame: FrameField = 0) -> JSONResponse:
        if len(files) > settings.max_batch_files:
            raise LanternError(f"a batch takes at most {settings.max_batch_files} files; this one has {len(files)}")
        return await in_pool(request, analyst.classify_each, [f.file for f in files], frame)

    @app.post("/explain", summary="Explain one image: the result with per-class maps", responses=REFUSALS,
              description="`methods`: comma-separated (gradcam, gradcam++, layercam); `classes`: 'predicted' "
                          "(default), 'all', or names / numbers; `output`: comma-separated png (overlay as "
                          "base64 PNG), array (float32 map, base64), dicom (DICOM objects, base64; `dicom` "
                          "chooses sc, pm, sr).")
    async def explain(request: Request, file: FileField, frame: FrameField = 0,
                      methods: MethodsField = "gradcam", classes: ClassesField = "predicted",
                      output: OutputField = "png", dicom: DicomField = "sc,pm,sr") -> JSONResponse:
        choice = explain_choice(model, methods, classes, output, dicom)
        return await in_pool(request, analyst.explain, file.file, frame, choice)

    return app
