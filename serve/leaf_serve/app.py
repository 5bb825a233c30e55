"""Assembly: config -> repository, executors, data plane -> routes and gRPC -> one Starlette app."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor

from leaf_common.inbox import Inbox
from leaf_common.resources import available_cpus
from leaf_common.shadow import note_review
from leaf_common.storage import open_store
from starlette.applications import Starlette
from starlette.exceptions import HTTPException

from .admin import AdminPortOnly
from .capture import CaptureQueue
from .classify import ClassifyApi
from .dataplane import DataPlane
from .grpc_v2 import service as grpc_service
from .inference import server_version
from .metrics import ServeMetrics
from .offline import PAGE_SECURITY, OfflinePages
from .openapi import OpenApiSection
from .pages import Pages, load_assets
from .repository import ModelRepository
from .rest import Api, RouteSection, error_response
from .review import ReviewApi
from .settings import ServeConfig
from .shadow import Shadow

log = logging.getLogger(__name__)

# At shutdown, queued captures get this long to reach the inbox (inside the pod's grace period).
CAPTURE_FLUSH_SECONDS = 5.0


def build_repository(config: ServeConfig, metrics: ServeMetrics | None = None) -> ModelRepository:
    """A repository with its own single inference thread (ORT parallelises inside a run)."""
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="leaf-infer")
    return ModelRepository(config, metrics or ServeMetrics(), executor)


def create_app(config: ServeConfig, repo: ModelRepository) -> Starlette:
    """The ASGI app serving ``repo``; hot reload runs while the app runs if the URI is a pointer.

    The repository is normally loaded before this (``load_initial``) so start-up fails loudly
    on a bad model; an unloaded one answers 503 on readiness until it is.
    """
    threads = config.decode_threads or available_cpus()
    decode_pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="decode")
    inbox = _inbox(config, repo)
    shadow = _shadow(config, repo)
    plane = DataPlane(repo, config, decode_pool, shadow)
    if inbox is not None and shadow is not None and shadow.model_store is not None:
        # reviewed photos score both
        inbox.on_accept = functools.partial(note_review, shadow.model_store)
    capture = _capture(config, plane, inbox)
    api = Api(plane, sections=_sections(config, repo, ClassifyApi(plane, capture), inbox))
    app = Starlette(
        routes=api.routes(),
        lifespan=functools.partial(_lifespan, config, plane, capture, decode_pool),
        exception_handlers={HTTPException: error_response, Exception: error_response},
    )
    if config.admin_port:
        app.add_middleware(AdminPortOnly, admin_port=config.admin_port)
    app.state.api, app.state.plane, app.state.capture = api, plane, capture
    return app


def _inbox(config: ServeConfig, repo: ModelRepository) -> Inbox | None:
    uri = config.inbox_uri  # --inbox, or derived from --model (ServeConfig's derived values)
    if not uri:
        return None
    return Inbox(open_store(uri, client=repo.s3_client_for(uri)))


def _shadow(config: ServeConfig, repo: ModelRepository) -> Shadow | None:
    if config.shadow_fraction <= 0:
        return None
    return Shadow(repo, config.shadow_fraction, config.shadow_max_in_flight)


def _capture(config: ServeConfig, plane: DataPlane, inbox: Inbox | None) -> CaptureQueue | None:
    """The inbox writer, when --capture is on and there is an inbox."""
    if not config.capture or inbox is None:
        return None
    capture = CaptureQueue.from_config(inbox, plane.metrics, config)
    # re-encoding a kept photo shares the requests' pixel budget
    capture.decode_budget = plane.decoding
    return capture


def _sections(
    config: ServeConfig, repo: ModelRepository, classify: ClassifyApi, inbox: Inbox | None
) -> list[RouteSection]:
    """Every route outside the v2 protocol: classify, pages, review, OpenAPI, the offline page."""
    assets = load_assets()
    review = ReviewApi(repo, assets)  # review off: its routes say so
    if config.review and inbox is not None:
        data = open_store(config.data, client=repo.s3_client_for(config.data))
        review = ReviewApi(repo, assets, config.review_token, (inbox, data), config)
    page_security = PAGE_SECURITY if config.offline_page else None
    sections = [
        classify,
        Pages(repo, config, assets, page_security),
        review,
        OpenApiSection(server_version()),
    ]
    if config.offline_page:
        sections.append(OfflinePages(repo, config, assets))
    return sections


@contextlib.asynccontextmanager
async def _lifespan(
    config: ServeConfig,
    plane: DataPlane,
    capture: CaptureQueue | None,
    decode_pool: ThreadPoolExecutor,
    app: Starlette,
) -> AsyncIterator[None]:
    """Start the background work (capture, hot reload, shadow, gRPC); stop it in order at exit."""
    if capture is not None:
        capture.start()
    _log_features(config, capture)
    tasks = _start_tasks(config, plane)
    # gRPC on the same event loop: the batcher, budgets and metrics are shared without a thread hop.
    grpc_server = grpc_check = None
    if config.grpc_port:
        grpc_server, grpc_check = await grpc_service.start(plane)
        plane.live_checks.append(grpc_check)
    try:
        yield
    finally:
        plane.draining = True
        if grpc_server is not None and grpc_check is not None:
            plane.live_checks.remove(grpc_check)
            await grpc_check.close()
            # uvicorn has drained HTTP; gRPC gets the same grace
            await grpc_server.stop(config.grace_period)
        for task in tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if plane.shadow is not None:
            # what mirroring showed since the last write reaches the registry
            await plane.shadow.close()
        decode_pool.shutdown(wait=False, cancel_futures=True)
        if capture is not None:
            await asyncio.to_thread(capture.stop, CAPTURE_FLUSH_SECONDS)
        log.info("stopped")


def _log_features(config: ServeConfig, capture: CaptureQueue | None) -> None:
    if capture is not None:
        log.info(
            "capture on: photos under confidence %g and marked wrong go to %s (%d a minute)",
            config.confidence_threshold,
            capture.inbox.uri,
            config.capture_per_minute,
        )
    if config.review:
        log.info("review on: /review moves photos from %s into %s", config.inbox_uri, config.data)


def _start_tasks(config: ServeConfig, plane: DataPlane) -> list[asyncio.Task[None]]:
    """Hot reload (when the URI is a pointer) and the shadow's flushes, as tasks on the loop."""
    tasks = []
    if plane.repo.follows_pointer and config.poll_interval > 0:
        tasks.append(asyncio.create_task(plane.repo.poll_forever(config.poll_interval)))
    if plane.shadow is not None:
        interval = config.poll_interval or config.shadow_flush_interval
        flushes = plane.shadow.run_forever(interval, config.shadow_flush_interval)
        tasks.append(asyncio.create_task(flushes))
    return tasks
