"""``leaf-serve``: parse options, load the model, serve until SIGTERM, drain within the grace period."""

from __future__ import annotations

import argparse
import logging
import sys

from leaf_common.config import ConfigError, add_arguments, resolve
from leaf_common.contract import ContractError
from leaf_common.storage import StoreError

from .app import build_repository, create_app
from .errors import ModelLoadError
from .settings import ENV_PREFIX, ServeConfig

log = logging.getLogger("leaf_serve")


def parse_config(argv: list[str] | None = None) -> ServeConfig:
    """Options from flags, then ``LEAF_SERVE_*`` environment variables, then defaults."""
    parser = argparse.ArgumentParser(prog="leaf-serve", description=__doc__)
    add_arguments(parser, ServeConfig, ENV_PREFIX)
    return resolve(ServeConfig, ENV_PREFIX, parser.parse_args(argv))


def serve(config: ServeConfig) -> None:
    """Load the model (failing loudly), then run uvicorn; uvicorn handles SIGTERM/SIGINT.

    On SIGTERM uvicorn stops accepting, lets in-flight requests finish for up to
    ``grace_period`` seconds, then runs the app's shutdown.
    """
    import uvicorn

    repo = build_repository(config)
    repo.load_initial()
    app = create_app(config, repo)
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host=config.host,
            port=config.port,
            log_level=config.log_level,
            access_log=config.log_level == "debug",
            timeout_graceful_shutdown=config.grace_period,
            limit_concurrency=config.max_concurrency or None,
            lifespan="on",
        )
    )
    server.run()


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status (2: bad option, 1: model cannot be served)."""
    try:
        config = parse_config(argv)
    except ConfigError as e:
        print(f"leaf-serve: {e}", file=sys.stderr)
        return 2
    logging.basicConfig(level=config.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        serve(config)
    except (ModelLoadError, ContractError, StoreError) as e:
        log.error("cannot serve %s: %s", config.model, e)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
