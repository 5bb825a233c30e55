"""Assembly: config -> metrics, repository, executors, routes -> one Starlette app."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor

from leaf_common.inbox import Inbox
from leaf_common.resources import available_cpus
from leaf_common.storage import open_store
from starlette.applications import Starlette
from starlette.exceptions import HTTPException

from .capture import CaptureQueue
from .grpc_v2 import service as grpc_service
from .metrics import ServeMetrics
from .offline import PAGE_SECURITY, OfflinePages
from .pages import Pages, load_assets
from .repository import ModelRepository
from .rest import Api, error_response
from .review import ReviewApi
from .settings import ServeConfig

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
    inbox = Inbox(open_store(config.inbox, client=repo.s3_client_for(config.inbox))) if config.inbox else None
    capture = None
    if config.capture and inbox is not None:
        capture = CaptureQueue(
            inbox, repo.metrics, per_minute=config.capture_per_minute, max_bytes=config.capture_queue_bytes
        )
    review = ReviewApi(repo, assets)
    if config.review and inbox is not None:
        data = open_store(config.data, client=repo.s3_client_for(config.data))
        review = ReviewApi(repo, assets, config.review_token, (inbox, data))
    sections = [Pages(repo, config, assets, PAGE_SECURITY if config.offline_page else None), review]
    if config.offline_page:
        sections.append(OfflinePages(repo, config, assets))
    api = Api(repo, config, repo.metrics, decode_pool, capture=capture, sections=sections)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        poller = None
        if capture is not None:
            capture.start()
            log.info("capture on: photos under confidence %g and marked wrong go to %s (at most %d a minute)",
                     config.confidence_threshold, capture.inbox.uri, config.capture_per_minute)  # fmt: skip
        if config.review:
            log.info("review on: /review moves photos from %s into %s", config.inbox, config.data)
        if repo.follows_pointer and config.poll_interval > 0:
            poller = asyncio.create_task(repo.poll_forever(config.poll_interval))
        # gRPC on the same event loop: the batcher, budgets and metrics are shared without a thread hop.
        grpc_server = await grpc_service.start(api, config.host, config.grpc_port) if config.grpc_port else None
        try:
            yield
        finally:
            api.draining = True
            if grpc_server is not None:  # uvicorn has drained HTTP by now; give gRPC calls the same grace
                await grpc_server.stop(config.grace_period)
            if poller is not None:
                poller.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await poller
            decode_pool.shutdown(wait=False, cancel_futures=True)
            if capture is not None:
                await asyncio.to_thread(capture.stop, CAPTURE_FLUSH_SECONDS)
            log.info("stopped")

    app = Starlette(
        routes=api.routes(),
        lifespan=lifespan,
        exception_handlers={HTTPException: error_response, Exception: error_response},
    )
    app.state.api = api
    return app
