"""Log lines for people (``text``) or a log pipeline (``json``), for leaf-train and leaf-serve.

Client-supplied strings stay escaped in both formats, so a request cannot forge a log line. The
fields of each format: docs/operations.md#logs---log-format-textjson
"""

from __future__ import annotations

import datetime
import json
import logging
import sys
from collections.abc import Mapping
from typing import Any, TextIO

LOG_FORMATS = ("text", "json")
# Keys a record may carry in ``extra=`` that JSON lines show as fields of their own.
FIELDS = ("method", "path", "status", "duration", "model", "version", "run_id", "worker", "client")
_CONTEXT: dict[str, Any] = {}
# Control characters (C0, DEL, C1) and Unicode's line/paragraph separators written as escapes;
# newline and tab included on purpose (a log viewer splits lines on any of them).
_ESCAPES = {
    c: chr(c).encode("unicode_escape").decode()
    for c in (*range(0x20), *range(0x7F, 0xA0), 0x2028, 0x2029)
}


def set_context(**fields: Any) -> None:
    """Fields every later line of this process carries (``None`` removes one), e.g. ``run_id``."""
    for key, value in fields.items():
        if value is None:
            _CONTEXT.pop(key, None)
        else:
            _CONTEXT[key] = value


def escape(text: str) -> str:
    """``text`` with control characters written as Python escapes (``\\n``, ``\\x1b``)."""
    return text.translate(_ESCAPES)


class TextFormatter(logging.Formatter):
    """``time LEVEL [context] logger: message``, with the message's control characters escaped."""

    def __init__(self, prefix: str = ""):
        super().__init__(f"%(asctime)s %(levelname)s {prefix}%(name)s: %(message)s")

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 - logging's name
        record.message = escape(record.message)
        return super().formatMessage(record)


class JsonFormatter(logging.Formatter):
    """One JSON object per line (see the module's docstring)."""

    def __init__(self, static: Mapping[str, Any] | None = None):
        super().__init__()
        self._static = dict(static or {})

    def format(self, record: logging.LogRecord) -> str:
        moment = datetime.datetime.fromtimestamp(record.created, datetime.UTC)
        line: dict[str, Any] = {
            "time": moment.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        line |= self._static
        line |= _CONTEXT
        for key in FIELDS:
            value = record.__dict__.get(key)
            if value is not None:
                line[key] = value
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        elif record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        # default=str: a field that is not JSON (a Path, an exception) is written as its text, never
        # lost.
        return json.dumps(line, default=str)  # ensure_ascii: C1 controls and U+2028 escaped too


class _Handler(logging.StreamHandler):  # type: ignore[type-arg]
    """This module's stderr handler: configuring again replaces it, a host's handlers stay.

    Given no stream it writes to whatever ``sys.stderr`` is when a record comes, as logging's own
    last-resort handler does: a stderr replaced later (a redirect, a test's capture) never leaves it
    writing to a closed file.
    """

    def __init__(self, stream: TextIO | None = None):
        self._follows_stderr = stream is None
        super().__init__(stream)

    @property  # type: ignore[override]
    def stream(self) -> TextIO:
        return sys.stderr if self._follows_stderr else self._stream

    @stream.setter
    def stream(self, value: TextIO) -> None:
        self._stream = value


def formatter(
    log_format: str, *, prefix: str = "", static: Mapping[str, Any] | None = None
) -> logging.Formatter:
    """The formatter for ``log_format`` (``text`` or ``json``).

    Args:
        prefix: text put before the logger name in ``text`` lines (e.g. ``"[worker 1] "``).
        static: fields every ``json`` line carries (e.g. ``{"worker": 1}``).
    """
    if log_format not in LOG_FORMATS:
        raise ValueError(
            f"log format: expected one of {', '.join(LOG_FORMATS)}; received {log_format!r}"
        )
    return JsonFormatter(static) if log_format == "json" else TextFormatter(prefix)


def configure(
    level: str = "INFO",
    log_format: str = "text",
    *,
    prefix: str = "",
    static: Mapping[str, Any] | None = None,
    stream: TextIO | None = None,
) -> None:
    """Send every logger's records to stderr (or ``stream``) in ``log_format``, from ``level``."""
    root = logging.getLogger()
    unconfigure()
    handler = _Handler(stream)
    handler.setFormatter(formatter(log_format, prefix=prefix, static=static))
    root.addHandler(handler)
    root.setLevel(getattr(logging, level.upper(), logging.INFO))


def unconfigure() -> None:
    """Remove the handler :func:`configure` added; a host's handlers stay (for a host that ran
    one of the programs in its own process, and for tests)."""
    root = logging.getLogger()
    for h in [h for h in root.handlers if isinstance(h, _Handler)]:
        root.removeHandler(h)
