"""Fixtures of the job's tests.

Converting VGG16 with tf2onnx costs seconds on 2 cores (most of it tf2onnx's optimizer copying the
base's 58 MB of constants), so the modules that only read a converted random-weight model share one
(one unit of work for the parallel run, tests/conftest.py SHARED_UNITS, so one worker converts it).
"""

from __future__ import annotations

import pytest

VGG32_SIZE, VGG32_CLASSES, VGG32_DENSE = 32, 3, 16


@pytest.fixture(params=["s3", "local"])
def output(request: pytest.FixtureRequest, tmp_path) -> str:
    """A registry root on S3 over HTTP (moto on loopback), then in a local folder."""
    if request.param == "s3":
        request.getfixturevalue("s3").make_bucket("models")
        return "s3://models/registry"
    return str(tmp_path / "registry")


@pytest.fixture(scope="session")
def vgg32_onnx():
    """``(model, onnx_bytes)``: the job's classifier at 32x32, random weights (seed 3), and its export.

    Shared: use the model for predictions only (no training, no set_weights).
    """
    import keras
    from leaf_train.export import to_onnx
    from leaf_train.model import build_model

    keras.utils.set_random_seed(3)
    model = build_model(VGG32_CLASSES, VGG32_SIZE, weights=None, dense_units=VGG32_DENSE)
    return model, to_onnx(model, VGG32_SIZE, opset=17)
