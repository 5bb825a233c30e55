"""Assembly: config -> metrics, repository, executors, data plane -> REST routes and gRPC -> one Starlette app."""

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
from .dataplane import DataPlane
from .grpc_v2 import service as grpc_service
from .inference import server_version
from .metrics import ServeMetrics
from .offline import PAGE_SECURITY, OfflinePages
from .openapi import OpenApiSection
from .pages import Pages, load_assets
from .repository import ModelRepository
from .rest import Api, error_response
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
    decode_pool = ThreadPoolExecutor(max_workers=config.decode_threads or available_cpus(), thread_name_prefix="decode")
    assets = load_assets()
    uri = config.inbox_uri  # --inbox, or derived from --model (ServeConfig's derived values)
    inbox = Inbox(open_store(uri, client=repo.s3_client_for(uri))) if uri else None
    capture = None
    if config.capture and inbox is not None:
        capture = CaptureQueue.from_config(inbox, repo.metrics, config)
    review = ReviewApi(repo, assets)
    if config.review and inbox is not None:
        data = open_store(config.data, client=repo.s3_client_for(config.data))
        review = ReviewApi(repo, assets, config.review_token, (inbox, data), config)
    page_security = PAGE_SECURITY if config.offline_page else None
    sections = [Pages(repo, config, assets, page_security), review, OpenApiSection(server_version())]
    if config.offline_page:
        sections.append(OfflinePages(repo, config, assets))
    shadow = Shadow(repo, config.shadow_fraction, config.shadow_max_in_flight) if config.shadow_fraction > 0 else None
    plane = DataPlane(repo, config, decode_pool, shadow)
    if inbox is not None and shadow is not None and shadow.model_store is not None:
        inbox.on_accept = functools.partial(note_review, shadow.model_store)  # reviewed photos score both models
    api = Api(plane, capture=capture, sections=sections)
    if capture is not None:
        capture.decode_budget = plane.decoding  # re-encoding a kept photo shares the requests' pixel budget

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        poller = None
        if capture is not None:
            capture.start()
            log.info("capture on: photos under confidence %g and marked wrong go to %s (at most %d a minute)",
                     config.confidence_threshold, capture.inbox.uri, config.capture_per_minute)  # fmt: skip
        if config.review:
            log.info("review on: /review moves photos from %s into %s", config.inbox_uri, config.data)
        if repo.follows_pointer and config.poll_interval > 0:
            poller = asyncio.create_task(repo.poll_forever(config.poll_interval))
        shadow_task = None
        if shadow is not None:
            interval = config.poll_interval or config.shadow_flush_interval
            shadow_task = asyncio.create_task(shadow.run_forever(interval, config.shadow_flush_interval))
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
                # uvicorn has drained HTTP by now; give gRPC calls the same grace
                await grpc_server.stop(config.grace_period)
            for task in (poller, shadow_task):
                if task is not None:
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
            if shadow is not None:
                await shadow.close()  # what mirroring showed since the last write reaches the registry
            decode_pool.shutdown(wait=False, cancel_futures=True)
            if capture is not None:
                await asyncio.to_thread(capture.stop, CAPTURE_FLUSH_SECONDS)
            log.info("stopped")

    app = Starlette(
        routes=api.routes(),
        lifespan=lifespan,
        exception_handlers={HTTPException: error_response, Exception: error_response},
    )
    if config.admin_port:
        app.add_middleware(AdminPortOnly, admin_port=config.admin_port)
    app.state.api = api
    app.state.plane = plane
    return app
