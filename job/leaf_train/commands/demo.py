"""``leaf-train demo``: the whole job on a laptop, no cloud account (the README's first command).

Starts an embedded S3 endpoint on loopback (moto's server mode: real HTTP, the same
boto3 code path as AWS or MinIO), writes a synthetic PlantVillage-style dataset to
it, trains a short run, exports, gates and publishes to that endpoint, then copies
the published version out of S3 into a local folder, since the embedded endpoint
lives only as long as this process.
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
from dataclasses import dataclass
from pathlib import Path

from leaf_common.config import ConfigError, add_arguments, option, resolve
from leaf_common.storage import Store, open_store

from ..config import TrainConfig
from ..kube import KubeConfig
from .train import summary

ENV_PREFIX = "LEAF_DEMO_"
DATA_BUCKET, MODEL_BUCKET = "leaf-photos", "leaf-models"


@dataclass
class DemoConfig:
    workdir: str = option("demo-output", "Local folder the published version is copied to")
    per_class: int = option(40, "Synthetic images per class")
    classes: int = option(6, "Synthetic classes")
    image_size: int = option(
        64, "Model input size (the product default is 150; smaller keeps the demo short)"
    )
    head_epochs: int = option(6, "Phase 1 epochs")
    finetune_epochs: int = option(4, "Phase 2 epochs")
    head_lr: float = option(
        1e-3, "Phase 1 learning rate (random conv weights need more than the book's 2e-5)"
    )
    finetune_lr: float = option(1e-4, "Phase 2 learning rate")
    weights: str = option(
        "none", "Conv-base weights: none (offline), imagenet (downloads ~60 MB), or a .h5 URI"
    )


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="end-to-end run against an embedded S3 endpoint on loopback")
    add_arguments(p, DemoConfig, ENV_PREFIX)
    p.set_defaults(func=run)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _point_boto_at(endpoint: str) -> None:
    # The demo owns this process: it sets the standard variables any boto3 user would.
    os.environ.update(
        AWS_ENDPOINT_URL=endpoint,
        AWS_ACCESS_KEY_ID="demo",
        AWS_SECRET_ACCESS_KEY="demo",
        AWS_DEFAULT_REGION="us-east-1",
    )
    os.environ.pop("AWS_PROFILE", None)


def run(args: argparse.Namespace) -> int:
    server_class = _moto_server()
    # Imported when the demo runs, not when the CLI starts: TensorFlow (pipeline), numpy/PIL.
    from ..gate import GateConfig
    from ..pipeline import run as run_pipeline

    cfg = resolve(DemoConfig, ENV_PREFIX, args)
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # the embedded endpoint's access log
    port = _free_port()
    server = server_class(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        endpoint = f"http://127.0.0.1:{port}"
        _point_boto_at(endpoint)
        data, n = _write_photos(cfg)
        print(f"embedded S3 at {endpoint}: wrote {n} synthetic photos to {data.uri}")
        train_cfg = _train_config(cfg, data.uri)
        result = run_pipeline(train_cfg, GateConfig(), KubeConfig(kube_integration="off"))
        local = _copy_out(result.version_uri, Path(cfg.workdir) / result.version)
        print(summary(result))
        print(f"copied from S3:  {local}  ({', '.join(sorted(p.name for p in local.iterdir()))})")
        print(f"serve it:        leaf-serve --model {local}")
        return 0
    finally:
        server.stop()


def _moto_server() -> type:
    """moto's threaded S3 server class, imported when the demo runs, not when the CLI starts."""
    try:
        from moto.server import ThreadedMotoServer
    # The GPU job image leaves the demo's S3 out (pyproject's `demo` extra).
    except ImportError as e:
        raise ConfigError(
            "leaf-train demo: expected moto[server] (the demo's embedded S3, the `demo` extra: "
            f"pip install 'leaf-train[demo]', or the CPU image); received ImportError: {e}"
        ) from e
    return ThreadedMotoServer


def _write_photos(cfg: DemoConfig) -> tuple[Store, int]:
    """Both buckets made on the embedded S3, and the synthetic photos written to the data one."""
    from ..synth import write

    data = open_store(f"s3://{DATA_BUCKET}/plantvillage")
    data.client.create_bucket(Bucket=DATA_BUCKET)
    data.client.create_bucket(Bucket=MODEL_BUCKET)
    n = write(data, cfg.per_class, cfg.classes, size=128, seed=0)
    return data, n


def _train_config(cfg: DemoConfig, data_uri: str) -> TrainConfig:
    """A short run on the demo's photos: small batches, no early stopping, a small parity set."""
    train_cfg = TrainConfig(
        data=data_uri,
        output=f"s3://{MODEL_BUCKET}/models",
        image_size=cfg.image_size,
        weights=cfg.weights,
        batch_size=16,
        head_epochs=cfg.head_epochs,
        finetune_epochs=cfg.finetune_epochs,
        head_lr=cfg.head_lr,
        finetune_lr=cfg.finetune_lr,
        early_stopping_patience=0,
        parity_images=32,
    )
    train_cfg.validate()
    return train_cfg


def _copy_out(version_uri: str, dest: Path) -> Path:
    """Read every published file back from S3 into ``dest`` (proves they are readable)."""
    src = open_store(version_uri)
    dest.mkdir(parents=True, exist_ok=True)
    for obj in src.list():
        target = dest / obj.key
        target.parent.mkdir(parents=True, exist_ok=True)
        src.download(obj.key, target)
    return dest.resolve()
