"""Fetch and decode every image once per job into one uint8 array.

Downloads run on an I/O pool, decodes on a CPU pool (Pillow releases the GIL while
decoding and resizing), with a bound on items in flight so memory stays flat however
large the bucket. The decoded array lives in RAM up to ``memory_budget_mb`` and in a
memory-mapped file under the cache folder beyond that, so a 500k-photo bucket trains
on an ordinary node. Bad files are skipped and reported, never fatal.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from leaf_common.imaging import ImageDecodeError, decode_image
from leaf_common.resources import available_cpus
from leaf_common.storage import Store, StoreError

from .config import TrainConfig
from .dataset import TRAIN, VAL, DatasetIndex
from .progress import progress

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BadFile:
    key: str
    reason: str


@dataclass(frozen=True)
class DecodeOptions:
    """How :func:`decode_all` fetches and decodes: built once from the job's config."""

    image_size: int
    memory_budget_mb: int = 2048
    download_workers: int = 16
    decode_workers: int = 0  # 0 = the pod's CPU quota
    max_pixels: int = 64_000_000
    progress: str = "auto"

    @classmethod
    def from_config(cls, cfg: TrainConfig) -> DecodeOptions:
        return cls(
            image_size=cfg.image_size,
            memory_budget_mb=cfg.memory_budget_mb,
            download_workers=cfg.download_workers,
            decode_workers=cfg.decode_workers,
            max_pixels=cfg.max_pixels,
            progress=cfg.progress,
        )


@dataclass
class DecodedImages:
    """``images[slot]`` holds the decoded photo of ``keys[slot]`` when ``ok[slot]``.

    It knows keys only: labels and splits belong to the index of the usable images, which is
    built after decoding (a class whose photos were all corrupt disappears from it).
    """

    keys: list[str]
    images: np.ndarray  # uint8 [N, H, W, 3]; np.memmap past the memory budget
    ok: np.ndarray  # bool [N]
    bad: list[BadFile] = field(default_factory=list)
    on_disk: bool = False

    def slots_of(self, keys: Sequence[str]) -> np.ndarray:
        """The slot of each of ``keys``, in their order."""
        slot = {k: i for i, k in enumerate(self.keys)}
        return np.asarray([slot[k] for k in keys], dtype=np.int64)


@dataclass
class PreparedData:
    """The usable images: their index, the decoded array, and each slot's label and split."""

    index: DatasetIndex  # built from the images that decoded
    decoded: DecodedImages
    labels: np.ndarray  # int32 label per slot of decoded.images, in the class order of ``index``
    train_slots: np.ndarray
    val_slots: np.ndarray

    @classmethod
    def of(cls, index: DatasetIndex, decoded: DecodedImages) -> PreparedData:
        """Labels and splits from ``index``; slots of images not in it keep label 0 and are never read."""
        labels = np.zeros(len(decoded.keys), dtype=np.int32)
        labels[decoded.slots_of([it.key for it in index.items])] = [it.label for it in index.items]
        train = decoded.slots_of([it.key for it in index.split(TRAIN)])
        val = decoded.slots_of([it.key for it in index.split(VAL)])
        return cls(index, decoded, labels, train, val)


def allocate(n: int, image_size: int, budget_bytes: int, cache_dir: Path) -> tuple[np.ndarray, bool]:
    """RAM array when it fits the budget, else a memory-mapped file in ``cache_dir``."""
    shape = (n, image_size, image_size, 3)
    nbytes = int(np.prod(shape))
    if nbytes <= budget_bytes:
        return np.zeros(shape, dtype=np.uint8), False
    cache_dir.mkdir(parents=True, exist_ok=True)
    path = cache_dir / f"decoded-{n}x{image_size}.u8"
    log.info("decoded set is %.1f GiB > budget: memory-mapping %s", nbytes / 2**30, path)
    return np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=shape), True


def decode_all(store: Store, keys: Sequence[str], opts: DecodeOptions, *, cache_dir: Path) -> DecodedImages:
    """Download and decode ``keys`` in parallel; failures become :class:`BadFile` entries."""
    keys = list(keys)
    size = opts.image_size
    images, on_disk = allocate(len(keys), size, opts.memory_budget_mb * 2**20, cache_dir)
    ok = np.zeros(len(keys), dtype=bool)
    bad: list[BadFile] = []
    lock = threading.Lock()
    decode_workers = opts.decode_workers or available_cpus()  # the pod's CPU quota, not the node's cores
    limit = 4 * (opts.download_workers + decode_workers)
    in_flight = threading.BoundedSemaphore(limit)

    with (
        progress("download", len(keys), opts.progress, position=0) as fetch_bar,
        progress("decode", len(keys), opts.progress, position=1) as decode_bar,
        ThreadPoolExecutor(opts.download_workers, thread_name_prefix="fetch") as fetch_pool,
        ThreadPoolExecutor(decode_workers, thread_name_prefix="decode") as decode_pool,
    ):

        def fail(slot: int, reason: str) -> None:
            with lock:
                bad.append(BadFile(keys[slot], reason))
                decode_bar.update(1)  # counts every item done with, decoded or skipped
            in_flight.release()

        def decode(slot: int, data: bytes) -> None:
            try:
                images[slot] = decode_image(data, (size, size), max_pixels=opts.max_pixels)
            except ImageDecodeError as e:
                fail(slot, str(e))
                return
            except Exception as e:  # a bad photo must never crash the job
                fail(slot, f"{type(e).__name__}: {e}")
                return
            ok[slot] = True
            with lock:
                decode_bar.update(1)
            in_flight.release()

        def fetched(slot: int, fut: Future[bytes]) -> None:
            with lock:
                fetch_bar.update(1)
            try:
                data = fut.result()
            except StoreError as e:
                fail(slot, f"download failed: {e}")
                return
            except Exception as e:  # network errors that botocore did not wrap
                fail(slot, f"download failed: {type(e).__name__}: {e}")
                return
            decode_pool.submit(decode, slot, data)

        for slot, key in enumerate(keys):
            in_flight.acquire()  # bounds bytes held between download and decode
            fut = fetch_pool.submit(store.get, key)
            fut.add_done_callback(lambda f, s=slot: fetched(s, f))
        for _ in range(limit):
            in_flight.acquire()  # wait until every item has been decoded or failed

    bad.sort(key=lambda b: b.key)
    for b in bad:
        log.warning("skipped %s: %s", b.key, b.reason)
    log.info("decoded %d images, skipped %d", int(ok.sum()), len(bad))
    return DecodedImages(keys, images, ok, bad, on_disk)
