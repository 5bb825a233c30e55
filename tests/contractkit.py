"""One builder of model contracts for every test package: ``from contractkit import contract``.

Importable from tests/job, tests/serve and tests/charts because pytest puts tests/ on ``sys.path``
when it loads tests/conftest.py (the default ``prepend`` import mode; the folders have no __init__).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from leaf_common.contract import INPUT_NAME, OUTPUT_NAME, ModelContract, TensorSpec


def contract(
    version: str,
    labels: Sequence[str] = ("healthy", "rust"),
    *,
    name: str = "leaf-classifier",
    size: int | tuple[int, int] = 8,
    output: str = OUTPUT_NAME,
    **fields: Any,
) -> ModelContract:
    """A contract for an NHWC float32 model of ``size`` (square, or ``(height, width)``).

    ``fields`` are the contract's other fields as the job records them: ``metrics``, ``gate``...
    """
    height, width = (size, size) if isinstance(size, int) else size
    return ModelContract(
        name=name,
        version=version,
        labels=list(labels),
        image_size=(height, width),
        input=TensorSpec(INPUT_NAME, [None, height, width, 3]),
        output=TensorSpec(output, [None, len(labels)]),
        **fields,
    )
