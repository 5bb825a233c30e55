"""Fetch and decode every image once per job into one uint8 array.

Downloads run on an I/O pool, decodes on a CPU pool (Pillow releases the GIL while
decoding and resizing), with a bound on items in flight so memory stays flat however
large the bucket. The decoded array lives in RAM up to ``memory_budget_mb`` and in a
memory-mapped file under the cache folder beyond that, so a 500k-photo bucket trains
on an ordinary node. Bad files are skipped and reported, never fatal.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
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
        """Labels and splits from ``index``; slots of images not in it keep label 0, never read."""
        labels = np.zeros(len(decoded.keys), dtype=np.int32)
        labels[decoded.slots_of([it.key for it in index.items])] = [it.label for it in index.items]
        train = decoded.slots_of([it.key for it in index.split(TRAIN)])
        val = decoded.slots_of([it.key for it in index.split(VAL)])
        return cls(index, decoded, labels, train, val)


def allocate(
    n: int, image_size: int, budget_bytes: int, cache_dir: Path
) -> tuple[np.ndarray, bool]:
    """RAM array when it fits the budget, else a memory-mapped file in ``cache_dir``."""
    shape = (n, image_size, image_size, 3)
    nbytes = int(np.prod(shape))
    if nbytes <= budget_bytes:
        return np.zeros(shape, dtype=np.uint8), False
    cache_dir.mkdir(parents=True, exist_ok=True)
    path = cache_dir / f"decoded-{n}x{image_size}.u8"
    log.info("decoded set is %.1f GiB > budget: memory-mapping %s", nbytes / 2**30, path)
    return np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=shape), True


def decode_all(
    store: Store, keys: Sequence[str], opts: DecodeOptions, *, cache_dir: Path
) -> DecodedImages:
    """Download and decode ``keys`` in parallel; failures become :class:`BadFile` entries.

    One loop on this thread owns every item from download to result: at most ``limit`` items are in
    flight (downloading, downloaded and waiting, or decoding), which bounds the bytes held however
    large the bucket. A finished download is handed to the decode pool by the same loop.
    """
    keys = list(keys)
    images, on_disk = allocate(len(keys), opts.image_size, opts.memory_budget_mb * 2**20, cache_dir)
    ok = np.zeros(len(keys), dtype=bool)
    bad = _DecodeRun(store, keys, opts, images, ok).run()
    bad.sort(key=lambda b: b.key)
    for b in bad:
        log.warning("skipped %s: %s", b.key, b.reason)
    log.info("decoded %d images, skipped %d", int(ok.sum()), len(bad))
    return DecodedImages(keys, images, ok, bad, on_disk)


class _DecodeRun:
    """One :func:`decode_all`: fills ``images``/``ok`` in place, collects the failures."""

    def __init__(
        self, store: Store, keys: list[str], opts: DecodeOptions, images: np.ndarray, ok: np.ndarray
    ) -> None:
        self.store, self.keys, self.opts, self.images, self.ok = store, keys, opts, images, ok
        self.bad: list[BadFile] = []
        self.stage: dict[
            Future, tuple[str, int]
        ] = {}  # every item in flight: which stage, which slot

    def run(self) -> list[BadFile]:
        opts, n = self.opts, len(self.keys)
        # The pod's CPU quota, not the node's.
        decode_workers = opts.decode_workers or available_cpus()
        # The bound on work in flight, and so on the bytes held, however large the bucket.
        limit = 4 * (opts.download_workers + decode_workers)
        with (
            progress("download", n, opts.progress, position=0) as self.fetch_bar,
            progress("decode", n, opts.progress, position=1) as self.decode_bar,
            ThreadPoolExecutor(opts.download_workers, thread_name_prefix="fetch") as fetch_pool,
            ThreadPoolExecutor(decode_workers, thread_name_prefix="decode") as self.decode_pool,
        ):
            for slot, key in enumerate(self.keys):
                while len(self.stage) >= limit:
                    self._step()
                self.stage[fetch_pool.submit(self.store.get, key)] = ("fetch", slot)
            while self.stage:
                self._step()
        return self.bad

    def _step(self) -> None:
        done, _ = wait(self.stage, return_when=FIRST_COMPLETED)
        for fut in done:
            self._settle(fut, *self.stage.pop(fut))

    def _settle(self, fut: Future, kind: str, slot: int) -> None:
        """A finished download goes on to the decode pool, still in flight; a decode ends it."""
        if kind == "fetch":
            self.fetch_bar.update(1)
            data, reason = _outcome(fut, "download failed: ")
            if reason is None:
                self.stage[self.decode_pool.submit(_decode, data, self.opts)] = ("decode", slot)
                return
        else:
            pixels, reason = _outcome(fut, "")
            if reason is None:
                self.images[slot], self.ok[slot] = pixels, True
        if reason is not None:
            self.bad.append(BadFile(self.keys[slot], reason))
        self.decode_bar.update(1)  # counts every item done with, decoded or skipped


def _decode(data: bytes, opts: DecodeOptions) -> np.ndarray:
    return decode_image(data, (opts.image_size, opts.image_size), max_pixels=opts.max_pixels)


def _outcome(fut: Future, prefix: str) -> tuple[object, str | None]:
    """``(result, None)``, or ``(None, reason)``: a bad photo or a failed GET never ends the job."""
    try:
        return fut.result(), None
    except (StoreError, ImageDecodeError) as e:
        return None, f"{prefix}{e}"
    except Exception as e:  # network errors botocore did not wrap; decoder bugs on odd files
        return None, f"{prefix}{type(e).__name__}: {e}"
