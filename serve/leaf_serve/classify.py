"""``/classify`` and ``/feedback``: one photo in, the top labels out; photos kept for review.

A route section like the pages and review (:class:`~leaf_serve.rest.RouteSection`): the photo is
read, probed and decoded within the server's budgets, classified through the data plane's batcher,
and, with ``--capture``, offered to the inbox writer (:mod:`leaf_serve.capture`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from leaf_common import formats
from leaf_common.imaging import ImageProbe, decode_image, probe
from leaf_common.inbox import CaptureRecord, InvalidName, check_class_name, make_record
from leaf_common.labels import readable_label
from leaf_common.shadow import CAPTURE_EXTRA
from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from . import codecs, trust
from .capture import DROPPED_CLIENT, DROPPED_QUEUE, DROPPED_RATE, CaptureQueue, client_key
from .dataplane import DataPlane
from .errors import BadRequest, NotFound, TooManyRequests, Unavailable, UnsupportedMediaType
from .repository import ServedModel
from .rest import DIGITS, Handler, read_body

# Raw bodies besides the image formats' own types: what curl and most HTTP libraries send unasked.
_RAW_OTHER_TYPES = ("application/octet-stream", "")


@dataclass(frozen=True)
class Classified:
    """One classified upload: the photo as received, its format, and the model's probabilities."""

    served: ServedModel
    photo: bytes
    photo_format: str  # the decoder's name (Image.format), a row of leaf_common.formats
    probs: np.ndarray
    # the decoded batch of one the model saw (for the shadow candidate)
    image: np.ndarray | None = None
    # the version's OOD score for the photo; None when it ships no detector
    ood: float | None = None

    def confident(self, threshold: float) -> bool:
        top = float(np.max(self.probs)) if self.probs.size else float("nan")
        return bool(np.isfinite(top) and top >= threshold)

    def verdict(self, confidence_threshold: float) -> trust.Verdict:
        ood_threshold = trust.ood_threshold(self.served.contract)
        return trust.verdict(self.probs, self.ood, ood_threshold, confidence_threshold)


class ClassifyApi:
    """The image endpoints over one :class:`DataPlane`, and the inbox writer when capture is on."""

    def __init__(self, plane: DataPlane, capture: CaptureQueue | None = None):
        self.plane = plane
        self.capture = capture
        self.repo, self.config = plane.repo, plane.config

    def table(self) -> list[tuple[str, Handler, str, str]]:
        """(path, handler, verb, metrics endpoint) of each route."""
        return [
            ("/classify", self.classify, "POST", "classify"),
            ("/feedback", self.feedback, "POST", "feedback"),
        ]

    async def classify(self, request: Request) -> Response:
        top_k = _top_k(request.query_params.get("top_k"), self.config.top_k)
        done = await self._classify_photo(request)
        captured = None
        if self.capture is not None and done.verdict(self.config.confidence_threshold).abstain:
            record = self._capture_record(done, "low_confidence")
            dropped = self.capture.offer(done.photo, record, self._client(request))
            captured = None if dropped else record.id  # a drop is only counted
        return JSONResponse(self._classified_body(done, top_k, captured))

    async def feedback(self, request: Request) -> Response:
        """The page's "this diagnosis is wrong": classify again, keep photo and answer."""
        if self.capture is None:
            flag = "--capture (LEAF_SERVE_CAPTURE=true)"
            raise NotFound(f"capture is off on this server: expected {flag} to keep photos")
        user_label = _user_label(request.query_params.get("label"))
        top_k = _top_k(request.query_params.get("top_k"), self.config.top_k)
        done = await self._classify_photo(request)
        record = self._capture_record(done, "marked_wrong", user_label)
        self._check_kept(self.capture.offer(done.photo, record, self._client(request)))
        return JSONResponse(self._classified_body(done, top_k, record.id))

    def _check_kept(self, dropped: str | None) -> None:
        """Tell the client a photo it marked wrong was not kept, and whether to send it again."""
        again = "this one was not kept, send it again in a minute"
        if dropped == DROPPED_CLIENT:
            limit = self.config.capture_per_client_per_minute
            raise TooManyRequests(
                f"capture: expected at most {limit} photos a minute from one client "
                f"(capture_per_client_per_minute); {again}"
            )
        if dropped == DROPPED_RATE:
            limit = self.config.capture_per_minute
            what = f"at most {limit} photos a minute (capture_per_minute)"
            raise TooManyRequests(f"capture: expected {what}; {again}")
        if dropped == DROPPED_QUEUE:
            full = "photos waiting to be stored fill capture_queue_bytes"
            raise Unavailable(f"capture: {full}; this one was not kept")

    def _client(self, request: Request) -> str:
        peer = request.client.host if request.client else None
        return client_key(peer, request.headers, self.config.client_address_header)

    async def _classify_photo(self, request: Request) -> Classified:
        """Read, probe, decode (within the budgets) and classify one uploaded photo."""
        served = self.repo.require()
        served.batcher.check_capacity()
        body = await read_body(request, self.config.max_body_bytes)
        data = _image_bytes(request.headers, body)
        found = await self.plane.off_loop(self._probe, data, served.contract.image_size)
        # priced from the header, before any pixel
        async with self.plane.decoding.hold(found.decode_bytes):
            image = await self.plane.off_loop(self._decode, data, served)
        scores = await served.batcher.submit(image)
        self.plane.answered(served, image, scores)
        ood = None if scores.ood is None else float(scores.ood[0])
        return Classified(served, data, found.format, scores.probs[0], image, ood)

    def _capture_record(
        self,
        done: Classified,
        reason: str,
        user_label: str | None = None,
    ) -> CaptureRecord:
        c = done.served.contract
        threshold = self.config.confidence_threshold
        record = make_record(
            done.photo_format,
            reason=reason,
            model=c.name,
            version=done.served.version,
            labels=c.labels,
            probabilities=[_finite_or_none(p) or 0.0 for p in done.probs],
            confidence_threshold=threshold,
            user_label=user_label,
            abstain_reason=done.verdict(threshold).reason,
        )
        shadow = self.plane.shadow
        if shadow is not None and done.image is not None:
            # The candidate answers the same photo off the response path; a reviewer's label
            # then scores both.
            candidate = shadow.answer_capture(done.served, done.image, done.probs, record.id)
            if candidate is not None:
                record = replace(record, extra={**record.extra, CAPTURE_EXTRA: candidate})
        return record

    def _classified_body(
        self,
        done: Classified,
        top_k: int,
        captured: str | None,
    ) -> dict[str, Any]:
        probs = done.probs
        order = np.argsort(-probs, kind="stable")[: min(top_k, len(probs))]
        labels = done.served.contract.labels
        threshold = self.config.confidence_threshold
        return {
            "model": done.served.name,
            "version": done.served.version,
            "predictions": [
                {
                    "label": labels[i],
                    "display": readable_label(labels[i]),
                    "probability": _finite_or_none(probs[i]),
                }
                for i in order
            ],
            "confidence_threshold": threshold,
            "confident": done.confident(threshold),
            "captured": captured,
            **trust.answer_fields(done.verdict(threshold)),
        }

    def _probe(self, data: bytes, size: tuple[int, int]) -> ImageProbe:
        # ImageDecodeError (no accepted format, unreadable header, over the pixel limit) is a 400.
        return probe(data, size, max_pixels=self.config.max_pixels)

    def _decode(self, data: bytes, served: ServedModel) -> np.ndarray:
        # 400 if corrupt
        pixels = decode_image(data, served.contract.image_size, max_pixels=self.config.max_pixels)
        return pixels[None].astype(served.model.input_dtype)


def _top_k(raw: str | None, default: int) -> int:
    if raw is None:
        return default
    if not DIGITS.fullmatch(raw) or int(raw) < 1:
        raise BadRequest(f"top_k: expected a positive integer; received {raw!r:.40}")
    return int(raw)


def _user_label(raw: str | None) -> str | None:
    """What the person says the photo shows (optional): a class name, as a reviewer types it."""
    if raw is None or not raw.strip():
        return None
    try:
        return check_class_name(raw)
    except InvalidName as e:
        raise BadRequest(f"label: {e}") from e


def _image_bytes(headers: Headers, body: bytes) -> bytes:
    """The image in a raw body or in the file field of a multipart form."""
    media = headers.get("content-type", "").split(";")[0].strip().lower()
    if media == "multipart/form-data":
        return codecs.multipart_file(headers.get("content-type", ""), body)
    if media not in (*formats.accepted_mime_types(), *_RAW_OTHER_TYPES):
        raw = [*formats.mime_types(), _RAW_OTHER_TYPES[0]]
        expected = f"{', '.join(raw)} or multipart/form-data"
        raise UnsupportedMediaType(f"Content-Type: expected {expected}; received {media:.60}")
    return body


def _finite_or_none(value: Any) -> float | None:
    v = float(value)
    return v if np.isfinite(v) else None
