"""The model contract: ``model.json`` beside ``model.onnx``.

The training job writes it, the server reads only it (like Triton's
``config.pbtxt``): input tensor name, shape, dtype and value range, labels in output
order, image size and resize method live here and nowhere else.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

from .errors import LeafError

SCHEMA_VERSION = 1
MODEL_FILE = "model.onnx"
CONTRACT_FILE = "model.json"
POINTER_FILE = "latest.json"
# The exported graph's tensors: RGB 0-255 in, softmax out. The job names the Keras layers and the
# ONNX signature with these; the contract records them, so the server reads them from model.json.
INPUT_NAME = "image"
OUTPUT_NAME = "probabilities"
# Optional second output (issue 22): [N] out-of-distribution score; above ``ood["threshold"]`` the
# photo does not look like the training photos. Versions exported before it have no such output and
# still serve.
OOD_NAME = "ood_score"


class ContractError(LeafError, ValueError):
    """A contract file is missing fields or disagrees with its model."""


@dataclass
class TensorSpec:
    name: str
    shape: list[int | None]  # None marks a dynamic dimension (the batch)
    dtype: str = "float32"


@dataclass
class ModelContract:
    """Everything a consumer needs to feed the model and read its output."""

    name: str
    version: str
    labels: list[str]
    image_size: tuple[int, int]  # (height, width)
    input: TensorSpec
    output: TensorSpec
    # The optional ``ood_score`` output; None for older versions.
    ood_output: TensorSpec | None = None
    resize_method: str = "bilinear"
    input_range: tuple[float, float] = (0.0, 255.0)
    color: str = "RGB"
    layout: str = "NHWC"
    model_file: str = MODEL_FILE
    model_sha256: str = ""
    opset: int = 17
    metrics: dict[str, Any] = field(default_factory=dict)
    dataset: dict[str, Any] = field(default_factory=dict)
    parity: dict[str, Any] = field(default_factory=dict)
    gate: dict[str, Any] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)
    # seed, determinism, package versions and install lock of the run (leaf_train.provenance)
    provenance: dict[str, Any] = field(default_factory=dict)
    # Calibration fitted by the run (method, temperature, ECE/NLL before and after on held-out
    # images).
    calibration: dict[str, Any] = field(default_factory=dict)
    # The OOD detector: method, threshold, held-out and OOD-set abstain rates.
    ood: dict[str, Any] = field(default_factory=dict)
    # Held-out distributions (predicted classes, top-1 confidence, OOD score) the server's drift
    # gauge compares with.
    reference: dict[str, Any] = field(default_factory=dict)
    code_version: str = ""
    created_at: str = ""
    schema_version: int = SCHEMA_VERSION

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    def validate(self) -> None:
        h, w = self.image_size
        expected_in = [None, h, w, 3]
        if list(self.input.shape) != expected_in:
            raise ContractError(f"input shape: expected {expected_in}; received {self.input.shape}")
        if list(self.output.shape) != [None, self.num_classes]:
            raise ContractError(
                f"output shape: expected [None, {self.num_classes}] for {self.num_classes} labels; "
                f"received {self.output.shape}"
            )
        if self.ood_output is not None:
            if self.ood_output.name == self.output.name or list(self.ood_output.shape) != [None]:
                raise ContractError(
                    f"ood_output: expected a [None] tensor named apart from {self.output.name!r}; "
                    f"received {self.ood_output.name!r} {self.ood_output.shape}"
                )
            if not isinstance(self.ood.get("threshold"), (int, float)):
                raise ContractError(
                    f"ood.threshold: expected a number with ood_output; received {self.ood!r:.80}"
                )
        if self.num_classes < 2:
            raise ContractError(f"labels: expected at least 2; received {self.labels}")
        if len(set(self.labels)) != len(self.labels):
            raise ContractError("labels: expected unique names; received duplicates")
        if self.schema_version != SCHEMA_VERSION:
            raise ContractError(
                f"schema_version: expected {SCHEMA_VERSION}; received {self.schema_version}"
            )

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["image_size"] = list(self.image_size)
        d["input_range"] = list(self.input_range)
        return d

    def to_json(self) -> bytes:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True).encode()

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelContract:
        try:
            known = {f.name for f in dataclasses.fields(cls)}
            kwargs = {k: v for k, v in d.items() if k in known}
            kwargs["input"] = TensorSpec(**d["input"])
            kwargs["output"] = TensorSpec(**d["output"])
            if d.get("ood_output") is not None:
                kwargs["ood_output"] = TensorSpec(**d["ood_output"])
            kwargs["image_size"] = tuple(d["image_size"])
            if "input_range" in d:
                kwargs["input_range"] = tuple(d["input_range"])
            contract = cls(**kwargs)
            contract.validate()
        except ContractError:
            raise
        # A field of the wrong type or shape, e.g. image_size [32].
        except (
            KeyError,
            TypeError,
            ValueError,
        ) as e:
            raise ContractError(
                f"{CONTRACT_FILE}: expected the leaf-train contract fields; {e!r}"
            ) from e
        return contract

    @classmethod
    def from_json(cls, data: bytes | str) -> ModelContract:
        try:
            d = json.loads(data)
        except json.JSONDecodeError as e:
            raise ContractError(f"{CONTRACT_FILE}: expected JSON; {e}") from e
        if not isinstance(d, dict):
            raise ContractError(
                f"{CONTRACT_FILE}: expected a JSON object; received {type(d).__name__}"
            )
        return cls.from_dict(d)
