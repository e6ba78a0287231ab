"""``svdtrt serve``: a Ray Serve application that turns images into clips over HTTP (docs/serving.md).

Two deployments, as Ray Serve's model-composition pattern has it:

- ``svdtrt`` (:class:`Ingress`), the FastAPI ingress: parses and checks each request (the image
  and the settings, with the limits of :meth:`SamplingSettings.check` and the bundle's exported
  range) and answers bad input with 400 or 413 and the one-line message ``svdtrt run`` prints, before
  any replica's time is spent; it takes no CPU of its own, and serves ``/healthz`` and the OpenAPI
  schema (``/docs``, ``/openapi.json``) even while every replica is busy.
- ``ClipModel`` (:class:`ClipModel`), the replicas: each holds one warm backend
  (:class:`~svdtrt.serving.worker.ClipMaker`) and makes one clip at a time
  (``max_ongoing_requests=1``: a second clip on the same GPU or CPUs only slows the first);
  at most ``max_queued`` more requests wait, and any beyond answer 503 with ``Retry-After``.

HTTP API (``POST /v1/clips``, ``GET /healthz``): see the README and :func:`Ingress.clips`.
"""


import asyncio
import dataclasses
import json
import logging
import threading
import typing
from dataclasses import dataclass
from typing import Annotated, Literal

import pydantic
from fastapi import FastAPI, Form, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from ray import serve
from ray.exceptions import RayActorError
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError

from ..errors import ClipCancelled, InputError, SvdtrtError, first_line
from ..progress import status
from ..runtime.settings import SamplingSettings
from ..specs import CACHING_COMPONENTS
from .cluster import disconnect
from .worker import FORMATS, ClipMaker, WorkerOptions, components_to_load, encode_clip

log = logging.getLogger(__name__)

#: The settings a service's ``--profile`` gives a request that gives none (besides ``steps``).
PROFILE_FIELDS = ("scheduler", "cache_interval", "guidance_steps")

#: Largest upload taken: 32 MiB, above a 4K (3840x2160) 24-bit PNG (about 25 MB); SVD uses at most
#: 1024x576, so larger photographs are better scaled down by the caller. Refused with 413 from the
#: request's Content-Length, before the body is read, where the client sends one.
MAX_UPLOAD_BYTES = 32 * 2**20
#: The name of the replicas' deployment (the config file's ``deployments`` entry).
MODEL_DEPLOYMENT = "ClipModel"
#: The name of the ingress deployment.
INGRESS_DEPLOYMENT = "svdtrt"


@dataclass(frozen=True)
class ServeOptions:
    """How the application is deployed.

    Attributes:
        worker: what each replica loads and the resources it asks for.
        replicas: ``ClipModel`` replicas (one per GPU for a GPU backend).
        max_queued: requests that may wait for a replica, in each caller's queue (Ray Serve's
            ``max_queued_requests``); more answer 503.
        retry_after_s: the ``Retry-After`` of a 503, seconds (about one clip's time).
        profile: the bundle's tuned profile (``svdtrt tune --apply``) whose scheduler, steps, cache
            interval and guidance steps a request gets where it gives none; None: the exact settings.
            The worker's backend and precision are the caller's to take from it (the CLI does).
    """

    worker: WorkerOptions
    replicas: int = 1
    max_queued: int = 8
    retry_after_s: float = 10.0
    profile: str | None = None


def _settings_form_fields() -> dict:
    """The settings' form fields, one per :class:`SamplingSettings` attribute with its default
    (so an option added there is a field here too); the clip size defaults to the bundle's."""
    hints = typing.get_type_hints(SamplingSettings)
    fields = {}
    for f in dataclasses.fields(SamplingSettings):
        # steps: the scheduler's default, as 'run' has it (SamplingSettings.for_bundle); the work a
        # service's --profile sets stands where a request gives none
        default = None if f.default is dataclasses.MISSING or f.name in ("steps", *PROFILE_FIELDS) else f.default
        flag = f"--{f.name.replace('_', '-')}"
        if default is not None:
            what = default
        elif f.name in ("steps", *PROFILE_FIELDS):
            what = "the service's --profile, else " + ("the scheduler's" if f.name == "steps" else "run's")
        else:
            what = {"frames": "the bundle's", "height": "the bundle's", "width": "the bundle's"}.get(f.name, "run's")
        fields[f.name] = (hints[f.name] | None, pydantic.Field(default, description=f"as `svdtrt run {flag}` "
                                                                                    f"(default: {what})"))
    return fields


#: The multipart form of ``POST /v1/clips``: ``image``, ``format`` and the sampling settings.
ClipRequest = pydantic.create_model(
    "ClipRequest",
    __config__=pydantic.ConfigDict(extra="forbid"),
    image=(UploadFile, pydantic.Field(description="the conditioning image (PNG, JPEG, ...)")),
    format=(Literal["mp4", "npy"], pydantic.Field("mp4", description="mp4 (H.264), or npy: float32 "
                                                                     "[F, H, W, 3] in [0, 1], as `run --save-frames`")),
    **_settings_form_fields(),
)
SETTINGS_FIELDS = tuple(f.name for f in dataclasses.fields(SamplingSettings))

api = FastAPI(
    title="svdtrt",
    summary="Stable Video Diffusion clips from images, on Ray Serve",
    description="POST an image to /v1/clips and get the clip back; GET /healthz. Bad input answers 400 or "
                "413 with `{\"detail\": one line}`, the message `svdtrt run` prints; a full queue or a "
                "replica lost mid-clip answers 503 with Retry-After; a replica's error answers 500 with one line.",
)


def _error(status: int, message: str, retry_after: float | None = None) -> JSONResponse:
    headers = {"Retry-After": str(max(1, round(retry_after)))} if retry_after is not None else None
    return JSONResponse({"detail": message}, status_code=status, headers=headers)


@api.exception_handler(RequestValidationError)
async def _one_line_validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    """FastAPI's list of validation errors as the first one, in one line, with status 400."""
    e = exc.errors()[0]
    field = str(e["loc"][-1]) if e.get("loc") else "request"
    if e["type"] == "extra_forbidden":
        known = ", ".join(ClipRequest.model_fields)
        return _error(400, f"unknown field '{field}'; the fields are {known}")
    if e["type"] == "missing":
        return _error(400, f"field '{field}' is required" + (" (the image file)" if field == "image" else ""))
    got = e.get("input")
    got = f" (got {got!r:.60})" if isinstance(got, (str, int, float)) else ""
    return _error(400, f"{field}: {e['msg']}{got}")


class _RefuseOversizeUploads:
    """413 for a request whose Content-Length is over :data:`MAX_UPLOAD_BYTES` (plus the form's
    other fields), before its body is read. A pure ASGI middleware, not starlette's
    ``BaseHTTPMiddleware``: that one logs "RuntimeError: No response returned." with a traceback
    whenever a request is cancelled (a 408, a client gone), which is routine here."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        length = dict(scope.get("headers") or ()).get(b"content-length", b"") if scope["type"] == "http" else b""
        if length.isdigit() and int(length) > MAX_UPLOAD_BYTES + 2**16:
            await _error(413, _too_large(int(length)))(scope, receive, send)
            return
        await self.app(scope, receive, send)


api.add_middleware(_RefuseOversizeUploads)


def _too_large(size: int) -> str:
    return (f"the upload is {size / 2**20:.1f} MiB, more than this service takes ({MAX_UPLOAD_BYTES / 2**20:.0f} MiB); "
            "scale the image down first (SVD uses at most 1024x576)")


@dataclass
class Made:
    """A replica's answer: the clip's bytes and per-stage seconds, or an HTTP status and one line."""

    data: bytes = b""
    timings: dict = dataclasses.field(default_factory=dict)
    status: int = 200
    error: str = ""


class ClipModel:
    """A replica: one warm backend, one clip at a time.

    Args:
        options: what to load (:class:`~svdtrt.serving.worker.WorkerOptions`).
    """

    def __init__(self, options: WorkerOptions):
        self.maker = ClipMaker(options)

    async def make(self, image, settings: SamplingSettings, fmt: str) -> Made:
        """The clip of ``image`` (RGB PIL image) with ``settings``, encoded as ``fmt`` (mp4, npy).
        Sampling runs on a thread, so that the replica keeps answering Ray's health checks.

        When the request is gone (it timed out with 408, or its client went away), Ray Serve
        cancels this call: sampling then stops before its next step, and the call returns only
        once it has, so that the replica is free for the next request, not busy with a clip
        nobody waits for."""
        cancel = threading.Event()
        work = asyncio.ensure_future(asyncio.to_thread(self._make, image, settings, fmt, cancel))
        try:
            return await asyncio.shield(work)
        except asyncio.CancelledError:
            cancel.set()
            await asyncio.wait([work])  # at most one step: the replica takes no new clip meanwhile
            raise

    def _make(self, image, settings: SamplingSettings, fmt: str, cancel: threading.Event) -> Made:
        try:
            clip = self.maker.make(image, settings, cancel)
            return Made(data=encode_clip(clip.frames, fmt, settings.fps), timings=clip.timings)
        except ClipCancelled as e:
            log.info("%s", e)
            return Made(status=499, error=first_line(e))
        except InputError as e:
            return Made(status=400, error=first_line(e))
        except SvdtrtError as e:  # a corrupt graph, NaN frames, a missing provider: the service's fault
            log.error("clip failed: %s", e)
            return Made(status=500, error=first_line(e))
        except Exception as e:  # a bug: the traceback goes to the replica's log, one line to the caller
            log.exception("clip failed")
            return Made(status=500, error=f"the replica failed ({type(e).__name__}: {first_line(e)[:200]}); "
                                          "see the replica's log")


@serve.ingress(api)
class Ingress:
    """The HTTP front: checks requests, forwards clips to the ``ClipModel`` replicas.

    Args:
        model: the ``ClipModel`` deployment's handle.
        worker: the replicas' options (the ingress reads the bundle's default clip size, exported
            range and block-caching graphs).
        retry_after_s: ``Retry-After`` of a 503.
    """

    def __init__(self, model, worker: WorkerOptions, retry_after_s: float = 10.0, profile: str | None = None):
        from ..bundle.profiles import bundle_profile
        from ..bundle.store import Bundle

        self.model, self.retry_after_s = model, retry_after_s
        self.backend, self.precision = worker.backend, worker.precision
        self.bundle = Bundle.open(worker.bundle)
        self.profile = bundle_profile(self.bundle, profile).settings if profile else None

    def settings(self, form) -> SamplingSettings:
        """The form's settings, with the bundle's clip size where not given, checked as ``run``
        checks them (the service runs only the bundle's exported size range).

        Raises:
            InputError: a setting out of its range, or a size outside the bundle's range.
        """
        settings = SamplingSettings.for_bundle(
            self.bundle, refuse_outside_range="this service makes clips within the bundle's exported range",
            profile=self.profile, **{name: getattr(form, name) for name in SETTINGS_FIELDS})
        missing = set(CACHING_COMPONENTS) - set(components_to_load(self.bundle, self.backend, self.precision))
        if settings.cache_interval > 1 and missing:
            raise InputError(f"this service's bundle has no block-caching {self.precision} "
                             f"{'engines' if self.backend == 'tensorrt' else 'graphs'} ({', '.join(sorted(missing))}); "
                             "send cache_interval 1, or deploy a bundle exported with them")
        return settings

    @api.post("/v1/clips", response_class=Response, responses={
        200: {"content": {t: {} for t in FORMATS.values()},
              "description": "the clip; per-stage times in the Server-Timing header (milliseconds), the "
                             "settings used in X-Svdtrt-Settings (JSON)"},
        400: {"description": "bad input: `{\"detail\": one line}`"},
        413: {"description": "the upload is too large"},
        500: {"description": "a replica's error, one line"},
        503: {"description": "every replica busy and the queue full, or a replica lost mid-clip; "
                             "retry after Retry-After seconds"}})
    async def clips(self, form: Annotated[ClipRequest, Form()]) -> Response:
        """Make a clip from ``image`` with the settings given (the others at ``svdtrt run``'s
        defaults): the same seed and settings give the same frames as ``svdtrt run``."""
        from ..media.images import decode_image

        if form.image.size is not None and form.image.size > MAX_UPLOAD_BYTES:
            return _error(413, _too_large(form.image.size))
        data = await form.image.read(MAX_UPLOAD_BYTES + 1)
        if len(data) > MAX_UPLOAD_BYTES:
            return _error(413, _too_large(len(data)))
        try:
            image = await asyncio.to_thread(decode_image, data, form.image.filename or "upload")
            settings = self.settings(form)
        except InputError as e:
            return _error(400, first_line(e))
        try:
            made = await self.model.make.remote(image, settings, form.format)
        except BackPressureError:
            return _error(503, "every replica is busy and the queue is full; retry later", self.retry_after_s)
        except (RayActorError, DeploymentUnavailableError) as e:
            log.warning("replica lost: %s", first_line(e))
            return _error(503, "the replica making this clip stopped before it finished (its process died); "
                               "send the request again", self.retry_after_s)
        if made.error:
            return _error(made.status, made.error)
        timing = ", ".join(f"{k};dur={v * 1000:.1f}" for k, v in made.timings.items())
        return Response(made.data, media_type=FORMATS[form.format], headers={
            "Server-Timing": timing, "X-Svdtrt-Settings": json.dumps(dataclasses.asdict(settings)),
            "Content-Disposition": f'attachment; filename="clip.{form.format}"'})

    @api.get("/healthz", responses={503: {"description": "some replica is not running (yet)"}})
    async def healthz(self) -> JSONResponse:
        """200 once every ``ClipModel`` replica has its backend loaded; 503 while some is starting or
        being replaced."""
        app = serve.get_replica_context().app_name
        status = await asyncio.to_thread(serve.status)
        deployment = status.applications[app].deployments[MODEL_DEPLOYMENT]
        running = int(deployment.replica_states.get("RUNNING", 0))
        if deployment.status != "HEALTHY":
            return _error(503, f"replicas are not all running ({deployment.status.lower()}, {running} running)",
                          self.retry_after_s)
        return JSONResponse({"status": "ok", "replicas": running})


def build_app(options: ServeOptions) -> serve.Application:
    """The application: the ingress bound to ``options.replicas`` ``ClipModel`` replicas."""
    model = serve.deployment(ClipModel, name=MODEL_DEPLOYMENT).options(
        num_replicas=options.replicas, ray_actor_options=options.worker.ray_resources(),
        max_ongoing_requests=1, max_queued_requests=options.max_queued,
        # a replica's health check must not fail while it loads a large bundle
        health_check_timeout_s=120)
    # The ingress takes no CPU from the replicas; it only parses forms and waits on them.
    ingress = serve.deployment(Ingress, name=INGRESS_DEPLOYMENT).options(
        num_replicas=1, ray_actor_options={"num_cpus": 0}, max_ongoing_requests=1000)
    return ingress.bind(model.bind(options.worker), options.worker, options.retry_after_s, options.profile)


def app_builder(args: dict) -> serve.Application:
    """The application for a Ray Serve config file (``import_path: svdtrt.serving.app:app_builder``),
    from ``args``: ``bundle`` (required), ``backend``, ``precision``, ``device``, ``cpus`` (per
    replica), ``replicas``, ``max_queued``, ``retry_after_s``, ``profile`` (whose backend and
    precision stand where ``args`` gives none).

    Raises:
        InputError: an unknown or missing argument.
    """
    args = dict(args)
    if "bundle" not in args:
        raise InputError("the application's args need 'bundle', the bundle's path on every node")
    serve_keys = {f.name for f in dataclasses.fields(ServeOptions)} - {"worker"}
    worker_keys = {f.name for f in dataclasses.fields(WorkerOptions)}
    unknown = set(args) - serve_keys - worker_keys
    if unknown:
        raise InputError(f"unknown application args {', '.join(sorted(unknown))}; the args are "
                         f"{', '.join(sorted(serve_keys | worker_keys))}")
    if args.get("profile"):
        from ..bundle.profiles import bundle_profile
        from ..bundle.store import Bundle

        settings = bundle_profile(Bundle.open(args["bundle"]), args["profile"]).settings
        args = {"backend": settings.backend, "precision": settings.precision, **args}
    worker = WorkerOptions(**{k: v for k, v in args.items() if k in worker_keys})
    return build_app(ServeOptions(worker, **{k: v for k, v in args.items() if k in serve_keys}))


def serve_forever(options: ServeOptions, host: str, port: int, request_timeout_s: float) -> None:
    """Deploy the application on the connected Ray (:func:`svdtrt.serving.cluster.connect`), serve
    HTTP on ``host:port`` until Ctrl-C or SIGTERM, then remove it.

    Raises:
        InputError: Ray Serve cannot start the application (the replicas' error, one line).
    """
    import signal
    import time

    # SIGTERM (docker stop, systemd, Kubernetes) stops it as Ctrl-C does, removing the application
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    with status("starting Ray Serve", logger=log):
        serve.start(http_options={"host": host, "port": port, "request_timeout_s": request_timeout_s})
    try:
        try:
            with status(f"starting the service: {options.replicas} replica(s) loading {options.worker.backend} "
                        f"{options.worker.precision}", logger=log):
                serve.run(build_app(options), name="svdtrt", route_prefix="/")
        except RuntimeError as e:
            raise InputError(f"the service did not start: {first_line(e)[:300]}") from None
        print(f"serving {options.worker.bundle} on http://{host}:{port} ({options.replicas} replica(s) of "
              f"{options.worker.backend} {options.worker.precision}); API docs at http://{host}:{port}/docs; "
              "Ctrl-C stops", flush=True)
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        # each step takes seconds with nothing of its own on screen: status lines say what runs
        with status("stopping the service", logger=log):
            serve.delete("svdtrt")
        disconnect()
        print("svdtrt: stopped serving", flush=True)
