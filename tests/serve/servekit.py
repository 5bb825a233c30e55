"""Builders for the serving tests: tiny ONNX models, registry folders and a real server on a loopback port.

The test model: ``image`` [N, H, W, 3] float32 in 0..255 -> mean colour over H, W (/255)
-> MatMul -> Add -> Softmax. Its output depends on the image's colour, so two versions
with different weights give visibly different answers, and the expected probabilities
can be computed with numpy.
"""

from __future__ import annotations

import functools
import io
import sys
import threading
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from contractkit import contract
from leaf_common.contract import CONTRACT_FILE, INPUT_NAME, MODEL_FILE, OUTPUT_NAME, ModelContract
from leaf_common.registry import (
    MANIFEST_FILE,
    VERSIONS_DIR,
    Manifest,
    ManifestEntry,
    Pointer,
    sha256_hex,
)
from leaf_common.storage import Store, open_store
from PIL import Image

with warnings.catch_warnings():
    # Starlette 1.x would rather have httpx2; httpx 0.28.1 is the locked client, and TestClient
    # works on it.
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

# pytest puts tests/ on sys.path (tests/conftest.py); bench/ scripts put only tests/serve there.
if str(Path(__file__).resolve().parent.parent) not in sys.path:
    sys.path.append(str(Path(__file__).resolve().parent.parent))
from testkit import free_port, wait_for  # noqa: E402

IMAGE_SIZE = (32, 32)
MODEL_NAME = "leaf"


# v1: red -> class 0, green -> 1, blue -> 2.  v2: the other way round, with other labels.
V1 = {"labels": ["healthy", "rust", "blight"], "weights": np.eye(3, dtype=np.float32) * 8}
V2 = {
    "labels": ["healthy", "rust", "blight", "mildew"],
    "weights": np.eye(3, 4, dtype=np.float32)[::-1] * 8,
}


def onnx_model(
    weights: np.ndarray, image_size: tuple[int, int] = IMAGE_SIZE, input_name: str = INPUT_NAME
) -> bytes:
    """A tiny classifier graph taking NHWC float32 RGB 0..255, returning softmax probabilities."""
    from onnx import TensorProto, helper, numpy_helper

    h, w = image_size
    classes = weights.shape[1]
    bias = np.linspace(-0.1, 0.1, classes).astype(np.float32)
    nodes = [
        helper.make_node("ReduceMean", [input_name], ["mean"], axes=[1, 2], keepdims=0),
        helper.make_node("Div", ["mean", "scale"], ["unit"]),
        helper.make_node("MatMul", ["unit", "W"], ["logits0"]),
        helper.make_node("Add", ["logits0", "b"], ["logits"]),
        helper.make_node("Softmax", ["logits"], [OUTPUT_NAME], axis=-1),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny-leaf",
        [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, ["N", h, w, 3])],
        [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["N", classes])],
        initializer=[
            numpy_helper.from_array(np.array(255.0, dtype=np.float32), "scale"),
            numpy_helper.from_array(weights.astype(np.float32), "W"),
            numpy_helper.from_array(bias, "b"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


def expected_probs(batch: np.ndarray, spec: dict) -> np.ndarray:
    """What the tiny model computes, in numpy."""
    weights = spec["weights"]
    bias = np.linspace(-0.1, 0.1, weights.shape[1]).astype(np.float32)
    logits = batch.astype(np.float64).mean(axis=(1, 2)) / 255 @ weights + bias
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def contract_for(
    spec: dict, version: str, image_size: tuple[int, int] = IMAGE_SIZE
) -> ModelContract:
    return contract(version, spec["labels"], name=MODEL_NAME, size=image_size)


def manifest(files: dict[str, bytes], version: str = "v1") -> bytes:
    """The registry's manifest for ``files``, exactly as the job's registry writes it."""
    entries = tuple(ManifestEntry(n, len(d), sha256_hex(d)) for n, d in files.items())
    return Manifest(
        version=version, created_at="2026-01-01T00:00:00Z", files=entries, name=MODEL_NAME
    ).to_json()


@dataclass
class Registry:
    """A model folder (``<root>/<MODEL_NAME>``) in a local dir or an S3 prefix, written like the job does."""

    root: str

    @functools.cached_property
    def store(
        self,
    ) -> Store:  # one client for the registry's life: an S3 client takes up to a second to build
        return open_store(f"{self.root}/{MODEL_NAME}")

    @property
    def pointer_uri(self) -> str:
        return f"{self.root}/{MODEL_NAME}/latest.json"

    def version_uri(self, version: str) -> str:
        return f"{self.root}/{MODEL_NAME}/{VERSIONS_DIR}/{version}"

    def publish(
        self,
        version: str,
        spec: dict,
        *,
        contract: ModelContract | None = None,
        model_bytes: bytes | None = None,
        tamper: Callable[[dict[str, bytes]], None] | None = None,
        extra: dict[str, bytes] | None = None,
    ) -> None:
        """Write a version folder; ``extra`` adds files (metrics.json, PNGs) to it and its manifest;
        ``tamper`` may corrupt files after the manifest was computed."""
        contract = contract or contract_for(spec, version)
        files = {
            MODEL_FILE: model_bytes or onnx_model(spec["weights"]),
            CONTRACT_FILE: contract.to_json(),
        }
        files |= extra or {}
        files[MANIFEST_FILE] = manifest(files, version)
        if tamper is not None:
            tamper(files)
        version_store = self.store.child(f"{VERSIONS_DIR}/{version}")
        for name, data in files.items():
            version_store.put(name, data)

    def promote(self, version: str) -> None:
        self.store.put("latest.json", Pointer(version=version, name=MODEL_NAME).to_json())


def colour_image(rgb: tuple[int, int, int], size: tuple[int, int] = IMAGE_SIZE) -> np.ndarray:
    """A float32 [1, H, W, 3] batch of one solid colour."""
    return np.broadcast_to(np.array(rgb, dtype=np.float32), (1, *size, 3)).copy()


def encode_image(
    rgb: tuple[int, ...], fmt: str = "PNG", mode: str = "RGB", size: tuple[int, int] = (64, 48)
) -> bytes:
    """Real JPEG/PNG bytes of a solid colour, in the given PIL mode (RGB, L, P, RGBA, LA)."""
    img = Image.new("RGB", size, rgb[:3])
    if mode == "RGBA":
        img = img.convert("RGBA")
        img.putalpha(rgb[3] if len(rgb) > 3 else 255)
    elif mode != "RGB":
        img = img.convert(mode)
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


@dataclass
class RunningServer:
    """A leaf-serve app on a loopback port, run by uvicorn in a thread."""

    url: str
    app: object
    server: object
    thread: threading.Thread
    config: object = field(repr=False, default=None)

    @property
    def repo(self):  # noqa: ANN201 - test helper
        return self.app.state.api.repo

    # The calls an AppClient takes, over the socket: a test can move between the two unchanged.
    def request(self, method: str, path: str, **kwargs: object):  # noqa: ANN201 - an httpx.Response
        import httpx

        return httpx.request(method, self.url + path, **kwargs)

    def get(self, path: str, **kwargs: object):  # noqa: ANN201
        return self.request("GET", path, **kwargs)

    def post(self, path: str, **kwargs: object):  # noqa: ANN201
        return self.request("POST", path, **kwargs)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


def build_app(model_uri: str, **overrides: object) -> tuple[object, object]:
    """(config, app): ``model_uri`` loaded and leaf-serve's ASGI app over it, as leaf-serve builds
    them."""
    from leaf_serve.app import build_repository, create_app
    from leaf_serve.settings import ServeConfig

    # gRPC off unless a test asks for it (grpc_port=free_port()): the default port would clash between tests.
    config = ServeConfig(
        model=model_uri,
        host="127.0.0.1",
        port=free_port(),
        providers=["cpu"],
        intra_op_threads=1,
        grpc_port=0,
    )
    config = replace(config, **overrides)
    config.validate()
    repo = build_repository(config)
    repo.load_initial()
    return config, create_app(config, repo)


def start_server(model_uri: str, **overrides: object) -> RunningServer:
    """Load ``model_uri`` and serve it on a free port; returns once uvicorn accepts connections."""
    from leaf_serve.__main__ import build_server

    config, app = build_app(model_uri, **overrides)
    server = build_server(
        replace(config, log_level="warning"), app
    )  # the production server: deadlines, limits
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_for(
        lambda: server.started or not thread.is_alive(),
        "uvicorn accepting connections",
        interval=0.01,
    )
    if not server.started:
        raise RuntimeError("test server did not start (its thread ended: see the log above)")
    return RunningServer(f"http://127.0.0.1:{config.port}", app, server, thread, config)


class AppClient(TestClient):
    """leaf-serve's app called in-process by Starlette's TestClient: no uvicorn, no socket.

    For what a handler answers (status, headers, body, metrics). What lives outside the app
    (header and body deadlines, the concurrency limit, draining, HTTP/2, gRPC) needs
    :func:`start_server`.
    """

    config: object = None

    @property
    def repo(self):  # noqa: ANN201 - test helper
        return self.app.state.api.repo


@contextmanager
def in_process(model_uri: str, **overrides: object) -> Iterator[AppClient]:
    """Like :func:`start_server`, but the app runs in-process: its lifespan (start-up, shutdown)
    runs as under uvicorn, requests go through the whole app, nothing listens on a port."""
    config, app = build_app(model_uri, **overrides)
    # The peer a loopback socket would show, for per-client limits and log lines; a 500 is answered,
    # not raised.
    with AppClient(app, raise_server_exceptions=False, client=("127.0.0.1", 50000)) as client:
        client.config = config
        yield client


def png(rgb: tuple[int, int, int], size: tuple[int, int] = (40, 30)) -> bytes:
    return encode_image(rgb, "PNG", size=size)


def card_metrics(labels: list[str], accuracy: float = 0.9167) -> dict:
    """A metrics.json as the job writes it (leaf_train.evaluate.compute_metrics), with made-up numbers."""
    n = len(labels)
    per_class = {
        label: {
            "precision": 0.9 - 0.1 * i,
            "recall": 0.8 + 0.05 * i,
            "f1": 0.85 - 0.02 * i,
            "support": 10 + i,
        }
        for i, label in enumerate(labels)
    }
    matrix = [[10 + i if i == j else 1 for j in range(n)] for i in range(n)]
    return {"num_images": 12 * n, "accuracy": accuracy, "top3_accuracy": 0.9812, "macro_f1": 0.8771,
            "per_class": per_class, "confusion_matrix": matrix, "labels": labels}  # fmt: skip


def publish_with_card(
    reg: Registry,
    version: str,
    spec: dict,
    *,
    figures: dict[str, bytes] | None = None,
    **kwargs: object,
) -> dict:
    """Publish ``version`` with the job's card artefacts (metrics.json, the two PNGs, gate and dataset in
    model.json); returns the metrics written. ``figures`` replaces the default tiny PNGs."""
    import json

    contract = contract_for(spec, version)
    metrics = card_metrics(contract.labels)
    contract.metrics = {
        k: metrics[k] for k in ("accuracy", "top3_accuracy", "macro_f1", "num_images")
    }
    contract.created_at = "2026-05-10T03:12:44+00:00"
    contract.code_version = "leaf-train 0.1.0"
    contract.dataset = {
        "images": 180,
        "train_images": 144,
        "val_images": 36,
        "fingerprint": "ab" * 32,
        "uri": "s3://p",
    }
    contract.gate = {"promote": True, "reason": "accuracy 0.9167 >= champion 0.9000 - 0.02 on the same 36 images",
                     "candidate_accuracy": 0.9167, "champion_accuracy": 0.9, "champion_version": "v0"}  # fmt: skip
    extra = {"metrics.json": json.dumps(metrics).encode()}
    extra |= figures or {
        "curves.png": png((10, 120, 10)),
        "confusion_matrix.png": png((200, 200, 60)),
    }
    reg.publish(version, spec, contract=contract, extra=extra, **kwargs)  # type: ignore[arg-type]
    return metrics
