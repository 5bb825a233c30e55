"""The image formats leaf-train accepts: one table that every place naming a format reads.

Decode, the REST Content-Types, the inbox's file names, the training data listing, the OpenAPI
document and the page's accept list all derive from :data:`FORMATS`, so accepting another format
(WebP, say) is one row here, given a Pillow built with its codec. The helpers read the table
when called, not at import, so a test can extend it in-process.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class ImageFormat:
    """One accepted format, and how a photo in it is kept once the server has cleaned it."""

    name: str  # what people read in messages: "JPEG"
    # Pillow's names for it (Image.format); a kept photo is saved as the first
    pillow: tuple[str, ...]
    magic: tuple[tuple[int, bytes], ...]  # (offset, bytes) every file of the format has
    mime: str  # its Content-Type, in the page's accept list and on a kept photo
    extensions: tuple[str, ...]  # lower case, with the dot; the first names a kept photo
    mime_aliases: tuple[str, ...] = ()  # other Content-Types clients send for it
    draft: bool = False  # Pillow decodes it already shrunk (JPEG's DCT scaling)
    alpha: bool = False  # a kept photo can keep its transparency
    save: Mapping[str, Any] = field(default_factory=dict)  # Pillow save() options of a kept photo

    @property
    def ext(self) -> str:
        """The extension of a kept photo, without the dot ("jpg")."""
        return self.extensions[0][1:]

    def matches(self, data: bytes) -> bool:
        """Whether ``data`` starts like a file of this format."""
        return all(data[at : at + len(sig)] == sig for at, sig in self.magic)


JPEG = ImageFormat(
    name="JPEG",
    pillow=("JPEG", "MPO"),  # MPO: the JPEG phones write with a second (depth, preview) frame
    magic=((0, b"\xff\xd8\xff"),),
    mime="image/jpeg",
    mime_aliases=("image/jpg",),
    extensions=(".jpg", ".jpeg"),
    draft=True,
    save={"quality": 95},  # kept photos are for a reviewer's eye and the next training run
)
PNG = ImageFormat(
    name="PNG",
    pillow=("PNG",),
    magic=((0, b"\x89PNG\r\n\x1a\n"),),
    mime="image/png",
    extensions=(".png",),
    alpha=True,
    save={"optimize": False},  # a slower encode for a few percent of storage is not worth it
)
FORMATS: tuple[ImageFormat, ...] = (JPEG, PNG)


def names() -> str:
    """The accepted formats for a message: "JPEG or PNG", "JPEG, PNG or WebP"."""
    all_names = [f.name for f in FORMATS]
    if len(all_names) == 1:
        return all_names[0]
    return f"{', '.join(all_names[:-1])} or {all_names[-1]}"


def pillow_names() -> tuple[str, ...]:
    return tuple(name for f in FORMATS for name in f.pillow)


def by_pillow(name: str | None) -> ImageFormat | None:
    """The format Pillow calls ``name`` (``Image.format``), if it is accepted."""
    return next((f for f in FORMATS if name in f.pillow), None)


def kept(ext: str) -> ImageFormat | None:
    """The format of a kept photo whose file name ends in ``.<ext>``, if any."""
    return next((f for f in FORMATS if f.ext == ext), None)


def kept_extensions() -> tuple[str, ...]:
    return tuple(f.ext for f in FORMATS)


def extensions() -> tuple[str, ...]:
    """Every accepted file name ending, with the dot."""
    return tuple(e for f in FORMATS for e in f.extensions)


def mime_types() -> tuple[str, ...]:
    """The Content-Types of the formats, as the page's accept list gives them."""
    return tuple(f.mime for f in FORMATS)


def accepted_mime_types() -> tuple[str, ...]:
    """Every Content-Type a raw upload of an accepted format may carry (aliases included)."""
    return tuple(m for f in FORMATS for m in (f.mime, *f.mime_aliases))


def sniff(data: bytes) -> ImageFormat | None:
    """The accepted format whose magic bytes ``data`` starts with, if any."""
    return next((f for f in FORMATS if f.matches(data)), None)
