"""The classifier of Chollet's *Deep Learning with Python* §5.3: VGG16 conv base -> Flatten ->
Dense(256, relu) -> Dense(classes, softmax).

Raw RGB in [0, 255] goes in; VGG16's caffe-style preprocessing is the first layer, so the exported
ONNX needs nothing but decode and resize in front of it. With 40 classes at 150x150 it has
16,822,376 parameters, 9,187,112 trainable once everything before ``block5_conv1`` is frozen.
"""

from __future__ import annotations

import logging
from pathlib import Path

import keras
from keras import layers
from leaf_common.config import option_error
from leaf_common.contract import INPUT_NAME, OUTPUT_NAME
from leaf_common.storage import open_store

from .config import ENV_PREFIX
from .errors import ConfigError

log = logging.getLogger(__name__)

BASE_NAME = "vgg16"
# ImageNet channel means in BGR order, as keras.applications.vgg16.preprocess_input uses.
VGG_MEAN_BGR = (103.939, 116.779, 123.68)


@keras.saving.register_keras_serializable(package="leaf_train")
class VggPreprocess(layers.Layer):
    """``vgg16.preprocess_input`` as a layer: RGB->BGR, subtract the ImageNet means.

    ``preprocess_input`` on a symbolic input makes tf2onnx emit a second graph input (such as
    ``functional_1/Squeeze/input:0``) that ONNX Runtime then demands; this layer does the same
    arithmetic, converts to one input and keeps ONNX/Keras parity at ~1e-7.
    """

    def call(self, inputs):
        bgr = keras.ops.flip(inputs, axis=-1)
        mean = keras.ops.convert_to_tensor(VGG_MEAN_BGR, dtype=bgr.dtype)
        return bgr - mean

    def compute_output_shape(self, input_shape):
        return input_shape


def weights_source(choice: str, cache_dir: Path) -> str | Path | None:
    """``--weights`` as :func:`load_base` takes it: ``imagenet`` (Keras downloads), ``none``, or a
    local/s3 .h5 staged into ``cache_dir``."""
    choice = choice.strip()
    if choice.lower() == "none":
        return None
    if choice.lower() == "imagenet":
        return "imagenet"
    if not choice.endswith(".h5"):
        raise option_error(
            ENV_PREFIX, "weights", "imagenet, none, or a URI of a .h5 file", repr(choice)
        )
    parent, _, name = choice.rpartition("/")
    local = cache_dir / name
    open_store(parent or ".").download(name, local)
    return local


def load_base(weights: str | Path | None, image_size: int) -> keras.Model:
    """VGG16 without its top; ``weights`` is ``"imagenet"``, ``None`` or a local .h5 path."""
    return keras.applications.VGG16(
        weights=str(weights) if isinstance(weights, Path) else weights,
        include_top=False,
        input_shape=(image_size, image_size, 3),
    )


def build_model(
    num_classes: int,
    image_size: int = 150,
    weights: str | Path | None = None,
    dense_units: int = 256,
) -> keras.Model:
    """The book's classifier; the conv base is a nested model named ``vgg16``."""
    if num_classes < 2:
        raise ConfigError(f"expected at least 2 classes; received {num_classes}")
    base = load_base(weights, image_size)
    inputs = keras.Input((image_size, image_size, 3), name=INPUT_NAME)
    x = VggPreprocess(name="vgg_preprocess")(inputs)
    # training=False keeps the base in inference mode even while block5 trains.
    x = base(x, training=False)
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dense(dense_units, activation="relu", name="dense")(x)
    # Softmax in float32 even under mixed precision: float16 probabilities lose the tail.
    outputs = layers.Dense(num_classes, activation="softmax", dtype="float32", name=OUTPUT_NAME)(x)
    return keras.Model(inputs, outputs, name="leaf_classifier")


def conv_base(model: keras.Model) -> keras.Model:
    return model.get_layer(BASE_NAME)


def freeze_for_phase(model: keras.Model, phase: int, fine_tune_from: str = "block5_conv1") -> None:
    """Phase 1: whole conv base frozen. Phase 2: layers from ``fine_tune_from`` on train.

    Callers must recompile after this: Keras fixes the trainable set at compile time.
    """
    base = conv_base(model)
    names = [layer.name for layer in base.layers]
    if fine_tune_from not in names:
        expected = f"a VGG16 layer name ({', '.join(n for n in names if 'conv' in n)})"
        raise option_error(ENV_PREFIX, "fine_tune_from", expected, repr(fine_tune_from))
    if phase == 1:
        base.trainable = False
        return
    base.trainable = True
    trainable = False
    for layer in base.layers:
        trainable = trainable or layer.name == fine_tune_from
        layer.trainable = trainable


def count_params(model: keras.Model) -> tuple[int, int]:
    """(total, trainable) parameter counts, as ``model.summary()`` reports them."""
    trainable = sum(int(w.numpy().size) for w in model.trainable_weights)
    total = sum(int(w.numpy().size) for w in model.weights)
    return total, trainable
