"""A small classifier trained on the suite's synthetic leaves, for the trust tests and bench/trust_bench.py.

The data goes through the job's own index and split (``dataset.build_index``, hash split) and the
job's ``PreparedData``; training is phase 1 of the job (frozen random-weight VGG16 base, the head
learns) without the tf.data pipeline, which is what a test on 2 CPU cores can afford.
"""

from __future__ import annotations

import io

import keras
import numpy as np
from leaf_common.contract import OUTPUT_NAME
from leaf_common.imaging import decode_image
from leaf_common.storage import ObjectInfo
from leaf_train.cache import DecodedImages, PreparedData
from leaf_train.dataset import build_index
from leaf_train.model import build_model, freeze_for_phase
from leaf_train.synth import generate
from leaf_train.trust import FEATURE_LAYER


def leaf_data(
    per_class: int, size: int, classes: int = 6, seed: int = 0, val_fraction: float = 0.4
) -> PreparedData:
    """Synthetic leaves (``leaf-train synth``), decoded at ``size`` and split by the job's hash rule."""
    pairs = list(generate(per_class, classes, size=128, seed=seed))
    objects = [ObjectInfo(key, len(data), f"etag-{i}") for i, (key, data) in enumerate(pairs)]
    index = build_index(objects, "mem://leaves", val_fraction)
    images = np.stack([decode_image(data, (size, size)) for _, data in pairs])
    decoded = DecodedImages([k for k, _ in pairs], images, np.ones(len(pairs), bool))
    return PreparedData.of(index, decoded)


def train_small(
    data: PreparedData, size: int, epochs: int = 8, seed: int = 1, dense_units: int = 256
) -> keras.Model:
    """Phase 1 of the job: the conv base frozen (random weights), the head trained with Adam.

    The base is frozen and nothing is augmented, so every epoch would push the same images through
    it: its output is computed once and the head's own layers (so the model gets their weights)
    train on that, as in the seed document's "fast feature extraction".
    """
    keras.utils.set_random_seed(seed)
    model = build_model(len(data.index.classes), size, weights=None, dense_units=dense_units)
    freeze_for_phase(model, 1)
    x = data.decoded.images[data.train_slots].astype(np.float32)
    flat = keras.Model(model.inputs, model.get_layer("flatten").output)
    features = flat.predict(x, batch_size=64, verbose=0)
    head_input = keras.Input(features.shape[1:])
    head = keras.Model(
        head_input, model.get_layer(OUTPUT_NAME)(model.get_layer(FEATURE_LAYER)(head_input))
    )
    head.compile(
        keras.optimizers.Adam(1e-3), "sparse_categorical_crossentropy", metrics=["accuracy"]
    )
    head.fit(
        features, data.labels[data.train_slots], batch_size=16, epochs=epochs, verbose=0,
        shuffle=True,
    )  # fmt: skip
    model.compile(loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


def jpeg(image: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="JPEG", quality=90)
    return buf.getvalue()
