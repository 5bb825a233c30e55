"""What an OIP v2 request does, whatever carried it (REST JSON, REST binary, gRPC).

The transports (``rest``, ``grpc_v2.service``) turn their bytes into a :class:`codecs.InferRequest`;
everything from there is here, once: the tensor checked against the contract before any data is
converted, the batch-size limit, NaN refusal, the dynamic batcher, and the outputs asked for.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import numpy as np

from . import codecs
from .errors import BadRequest
from .repository import ServedModel
from .trust import Scores

EXTENSIONS = ["binary_tensor_data", "model_repository_metadata"]


def server_version() -> str:
    try:
        return version("leaf-train")
    except PackageNotFoundError:
        return "0+unknown"


# Runs a blocking function off the event loop (the server's decode pool).
OffLoop = Callable[..., Awaitable[Any]]
Outputs = list[tuple[str, np.ndarray, bool]]


def check_input(
    parsed: codecs.InferRequest, served: ServedModel, max_batch_size: int
) -> codecs.InputTensor:
    """The request's one tensor checked against the contract (name, dtype, shape, batch size)."""
    c = served.contract
    names = [t.name for t in parsed.inputs]
    if names != [c.input.name]:
        raise BadRequest(
            f"inputs: expected exactly one tensor named {c.input.name!r}; received {names!r:.120}"
        )
    tensor = parsed.inputs[0]
    datatype = codecs.datatype_of(served.model.input_dtype)
    if tensor.datatype != datatype:
        raise BadRequest(
            f"input {c.input.name!r}: expected datatype {datatype}; received {tensor.datatype}"
        )
    h, w = c.image_size
    if len(tensor.shape) != 4 or list(tensor.shape[1:]) != [h, w, 3] or tensor.shape[0] < 1:
        raise BadRequest(
            f"input {c.input.name!r}: expected shape [N, {h}, {w}, 3] with N >= 1; received "
            f"{list(tensor.shape)}"
        )
    if tensor.shape[0] > max_batch_size:
        # Like Triton: one request is at most one batch, so no client can hold the model for
        # everyone else.
        raise BadRequest(
            f"input {c.input.name!r}: expected at most {max_batch_size} images per request "
            f"(max_batch_size); received {tensor.shape[0]}"
        )
    return tensor


def materialize(tensor: codecs.InputTensor) -> np.ndarray:
    """The tensor's values, refusing NaN and infinities (they come back as NaN probabilities)."""
    array = tensor.to_array()
    if array.dtype.kind == "f":
        bad = int(array.size - np.count_nonzero(np.isfinite(array)))
        if bad:
            raise BadRequest(
                f"input {tensor.name!r}: expected finite pixel values; received {bad} NaN or "
                "infinite"
            )
    return array


def select_outputs(parsed: codecs.InferRequest, served: ServedModel, scores: Scores) -> Outputs:
    """``(name, array, binary)`` per output the request asked for (probabilities if none).

    The ``ood_score`` output of versions that ship it is sent only when asked for by name, so
    clients that ignore it see the same response as before.
    """
    name = served.contract.output.name
    arrays = {name: scores.probs}
    if served.contract.ood_output is not None and scores.ood is not None:
        arrays[served.contract.ood_output.name] = scores.ood
    if parsed.outputs is None:
        return [(name, scores.probs, parsed.binary_output)]
    unknown = sorted(set(parsed.outputs) - set(arrays))
    if unknown:
        raise BadRequest(
            f"outputs: expected some of {sorted(arrays)}; received unknown {unknown!r:.120}"
        )
    return [
        (n, arrays[n], parsed.binary_output if parsed.outputs[n] is None else parsed.outputs[n])
        for n in arrays
        if n in parsed.outputs
    ]


# Told of every answered batch (the shadow mirror): must return at once, never raise into the
# request.
Answered = Callable[[ServedModel, np.ndarray, Any], None]  # (served, batch, its trust.Scores)


async def infer(
    parsed: codecs.InferRequest,
    served: ServedModel,
    max_batch_size: int,
    off_loop: OffLoop,
    answered: Answered | None = None,
) -> Outputs:
    """Run one parsed request through the served model's batcher; returns the outputs to send."""
    tensor = check_input(parsed, served, max_batch_size)
    # Raw bytes are one frombuffer (cheap, stay on the loop); JSON lists are converted in a worker.
    batch = materialize(tensor) if tensor.raw is not None else await off_loop(materialize, tensor)
    scores = await served.batcher.submit(batch)
    if answered is not None:
        answered(served, batch, scores)
    return select_outputs(parsed, served, scores)


def model_metadata(served: ServedModel, max_batch_size: int) -> dict[str, Any]:
    """The v2 model metadata (both transports send this, REST as JSON, gRPC as its message)."""
    c = served.contract
    h, w = c.image_size
    return {
        "name": c.name,
        "versions": [served.version],
        "platform": "onnxruntime_onnx",
        "inputs": [
            {
                "name": c.input.name,
                "datatype": codecs.datatype_of(served.model.input_dtype),
                "shape": [-1, h, w, 3],
            }
        ],
        "outputs": [
            {"name": c.output.name, "datatype": "FP32", "shape": [-1, c.num_classes]},
            *(
                [{"name": c.ood_output.name, "datatype": "FP32", "shape": [-1]}]
                if c.ood_output
                else []
            ),
        ],
        "parameters": {
            "execution_provider": served.model.provider,
            "padded_batch_size": served.model.pad_to,
            "labels": c.labels,
            "image_size": [h, w],
            "max_batch_size": max_batch_size,
            "input_range": list(c.input_range),
            "model_file": served.model.model_file,
        },
    }
