"""The data plane both transports call: repository, draining, budgets, pool, readiness, inference.

REST (``rest.Api``) and gRPC (``grpc_v2``) are each only a codec and routes over one
:class:`DataPlane`, as MLServer's transports are over its ``DataPlane``: what "ready" means, which
bytes a request may hold and where blocking work runs are decided here, once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor
from typing import Any

import numpy as np

from . import codecs, inference
from .limits import BodyAllowance, MemoryBudget
from .metrics import ServeMetrics
from .repository import ModelRepository, ServedModel
from .settings import ServeConfig
from .shadow import Shadow
from .trust import Scores


class DataPlane:
    """What a request can ask of the server, whichever transport carried it."""

    def __init__(
        self,
        repo: ModelRepository,
        config: ServeConfig,
        decode_pool: Executor,
        shadow: Shadow | None = None,
    ):
        """``decode_pool``: the threads that parse, convert and decode off the event loop;
        ``shadow``: the candidate a share of answered requests is mirrored to
        (``--shadow-fraction``), if on."""
        self.repo = repo
        self.shadow = shadow
        self.config = config
        self.metrics: ServeMetrics = repo.metrics
        self.decode_pool = decode_pool
        # Requests being answered now, both transports (shadow mirroring waits for a lull)
        self.active = 0
        # Set at SIGTERM: readiness fails, REST responses close their connections.
        self.draining = False
        self.bodies = MemoryBudget(
            config.max_body_bytes_in_flight, "request bodies", "max_body_bytes_in_flight"
        )
        self.decoding = MemoryBudget(config.max_decode_bytes, "image decoding", "max_decode_bytes")
        for name, budget in (("request_bodies", self.bodies), ("image_decoding", self.decoding)):
            self.metrics.memory_in_use.labels(name).set_function(lambda b=budget: b.in_use)
        # What liveness asks besides "this event loop answers": gRPC adds a call to itself
        # (grpc_v2.service.SelfCheck).
        self.live_checks: list[Callable[[], Awaitable[str | None]]] = []

    async def live(self) -> str | None:
        """None when the server can take calls on every transport; else what cannot (not live)."""
        for check in self.live_checks:
            problem = await check()
            if problem is not None:
                return problem
        return None

    def ready(self) -> bool:
        """Whether the server takes inference: a model is loaded and SIGTERM has not come."""
        return self.repo.current is not None and not self.draining

    def served(self, name: str | None = None, version: str | None = None) -> ServedModel:
        """The model (version) a request names; NotFound for one this server does not serve."""
        return self.repo.require(name, version)

    def model_ready(self, served: ServedModel) -> bool:
        return served.model.ready and not self.draining

    def server_metadata(self) -> dict[str, Any]:
        return {
            "name": "leaf-serve",
            "version": inference.server_version(),
            "extensions": inference.EXTENSIONS,
        }

    def model_metadata(self, served: ServedModel) -> dict[str, Any]:
        return inference.model_metadata(served, self.config.max_batch_size)

    def body_allowance(self) -> BodyAllowance:
        """What one request may take from the shared body budget; released when it ends."""
        return BodyAllowance(self.bodies)

    async def off_loop(self, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(*args)`` in the decode pool, so the event loop keeps serving meanwhile."""
        return await asyncio.get_running_loop().run_in_executor(self.decode_pool, fn, *args)

    async def infer(self, parsed: codecs.InferRequest, served: ServedModel) -> inference.Outputs:
        """Run one parsed v2 request through ``served``'s batcher; the outputs to send."""
        return await inference.infer(
            parsed, served, self.config.max_batch_size, self.off_loop, self.answered
        )

    def answered(self, served: ServedModel, batch: np.ndarray, scores: Scores) -> None:
        """Every answered inference (v2 on both transports, /classify) passes here once settled."""
        if self.shadow is not None:
            self.shadow.mirror(served, batch, scores, others=self.active - 1)
