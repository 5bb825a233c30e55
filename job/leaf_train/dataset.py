"""Dataset discovery and the train/validation split.

Layout (PlantVillage): ``<prefix>/<class name>/<image>.(jpg|jpeg|png)``. Classes are
the sorted set of class folders found at run time; hidden folders and non-image keys
are ignored. The split is decided per image by a hash of its key, so an image never
changes side when others are added or removed as the bucket grows.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from leaf_common.imaging import is_image_key
from leaf_common.storage import ObjectInfo, Store

from .errors import DataError

log = logging.getLogger(__name__)

TRAIN, VAL = "train", "val"
_HASH_SPACE = 2**64


@dataclass(frozen=True)
class Item:
    key: str  # relative to the dataset root: "<class>/<file>"
    label: int
    size: int
    etag: str
    split: str


@dataclass
class DatasetIndex:
    """What was found: classes in output order, items, and what was ignored."""

    root: str
    classes: list[str]
    items: list[Item]
    ignored: list[str] = field(default_factory=list)  # non-image or hidden keys
    # Listed images that could not be decoded: not trained on, but recorded, so that the retrain
    # policy (freshness.py) sees the same listing next time and not "new" photos.
    unusable: list[ObjectInfo | Item] = field(default_factory=list)

    def split(self, name: str) -> list[Item]:
        return [it for it in self.items if it.split == name]

    def counts(self, name: str | None = None) -> dict[str, int]:
        c = Counter(self.classes[it.label] for it in self.items if name is None or it.split == name)
        return {cls: c.get(cls, 0) for cls in self.classes}

    def fingerprint(self) -> str:
        """SHA-256 over every (key, etag, size): changes whenever the data changes."""
        h = hashlib.sha256()
        for it in sorted(self.items, key=lambda i: i.key):
            h.update(f"{it.key}\0{it.etag}\0{it.size}\n".encode())
        return h.hexdigest()

    def manifest(self) -> bytes:
        """``dataset.json``: the keys (ETag, size) a version trained on, and the unusable ones."""
        body = {
            "root": self.root,
            "fingerprint": self.fingerprint(),
            "classes": self.classes,
            "images": [
                {"key": i.key, "etag": i.etag, "size": i.size, "split": i.split} for i in self.items
            ],
            "unusable": [{"key": o.key, "etag": o.etag, "size": o.size} for o in self.unusable],
        }
        return json.dumps(body, indent=1).encode()

    def usable(self, ok: Sequence[bool], val_fraction: float) -> DatasetIndex:
        """The index of the items that decoded (``ok[i]`` for ``items[i]``); the rest are unusable.

        Classes are re-derived, so a class whose photos were all corrupt disappears and labels stay
        dense, and the split rule is re-applied, so "every class has validation images" holds for
        what can actually be used. A photo keeps its side: the split is a hash of its key.
        """
        by_class: dict[str, list[Item]] = {}
        for it, good in zip(self.items, ok, strict=True):
            if good:
                by_class.setdefault(self.classes[it.label], []).append(it)
        classes, items = _labelled(by_class, val_fraction)
        unusable = [it for it, good in zip(self.items, ok, strict=True) if not good]
        return DatasetIndex(self.root, classes, items, self.ignored, unusable)


def hash_split(key: str, val_fraction: float) -> str:
    """Stable side for ``key``: depends on nothing but the key itself."""
    digest = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big")
    return VAL if digest < val_fraction * _HASH_SPACE else TRAIN


def _class_of(key: str) -> str | None:
    """Class folder of ``<class>/<file>``; None for keys outside the layout or hidden."""
    parts = key.split("/")
    if len(parts) != 2 or any(p.startswith(".") or not p for p in parts):
        return None
    return parts[0] if is_image_key(parts[1]) else None


def build_index(objects: Iterable[ObjectInfo], root: str, val_fraction: float) -> DatasetIndex:
    """Group listed objects into classes and assign each image its split."""
    by_class: dict[str, list[ObjectInfo]] = {}
    ignored: list[str] = []
    for obj in objects:
        cls = _class_of(obj.key)
        if cls is None:
            ignored.append(obj.key)
            continue
        by_class.setdefault(cls, []).append(obj)
    classes, items = _labelled(by_class, val_fraction)
    return DatasetIndex(root, classes, items, ignored)


def _labelled(
    by_class: Mapping[str, Sequence[ObjectInfo | Item]], val_fraction: float
) -> tuple[list[str], list[Item]]:
    """Classes in output order, and an :class:`Item` (label, split) per object of each class."""
    classes = sorted(by_class)
    items: list[Item] = []
    for label, cls in enumerate(classes):
        objs = sorted(by_class[cls], key=lambda o: o.key)
        splits = [hash_split(o.key, val_fraction) for o in objs]
        if VAL not in splits and len(objs) > 1:
            # Tiny classes can hash entirely to train; hold out the key that hashes lowest,
            # which is still a pure function of the class's keys.
            lowest = min(
                range(len(objs)), key=lambda i: hashlib.sha256(objs[i].key.encode()).digest()
            )
            splits[lowest] = VAL
        items += [Item(o.key, label, o.size, o.etag, s) for o, s in zip(objs, splits, strict=True)]
    return classes, items


def check_index(index: DatasetIndex, min_images_per_class: int) -> None:
    """Stop the job, naming the class and prefix, when the data cannot train a classifier."""
    if len(index.classes) < 2:
        raise DataError(
            f"expected at least 2 class folders with images under {index.root}; "
            f"found {len(index.classes)}: {index.classes}"
        )
    for cls, n in index.counts().items():
        if n < min_images_per_class:
            raise DataError(
                f"class {cls!r} under {index.root} has {n} usable images; expected at least "
                f"{min_images_per_class}"
            )


def discover(store: Store, val_fraction: float, progress: object | None = None) -> DatasetIndex:
    """List ``store`` (paginated) and build the index."""
    objects = []
    for obj in store.list():
        objects.append(obj)
        if progress is not None:
            progress.update(1)  # type: ignore[attr-defined]
    index = build_index(objects, store.uri, val_fraction)
    log.info(
        "found %d images in %d classes under %s (%d keys ignored)",
        len(index.items),
        len(index.classes),
        store.uri,
        len(index.ignored),
    )
    return index
