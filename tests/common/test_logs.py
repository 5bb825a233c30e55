"""leaf_common.logs: the text and JSON line formats both programs write."""

from __future__ import annotations

import io
import json
import logging

import pytest
from leaf_common import logs


@pytest.fixture
def captured():
    """Records of a private logger written through ``logs.configure`` into a buffer; the root is restored."""
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    out = io.StringIO()

    def configure(log_format: str, **kwargs) -> io.StringIO:
        logs.configure("DEBUG", log_format, stream=out, **kwargs)
        return out

    yield configure
    root.handlers[:], root.level = saved
    logs.set_context(run_id=None, version=None)


def test_json_line_has_the_base_fields_and_the_request_fields(captured):
    out = captured("json")
    extra = {"method": "POST", "path": "/classify", "status": 200, "duration": 0.0123}
    logging.getLogger("leaf_serve.rest").info(
        "POST /classify -> 200", extra=extra | {"model": "m", "version": "v1"}
    )
    (line,) = out.getvalue().splitlines()
    record = json.loads(line)
    assert record["time"].endswith("Z") and record["time"][10] == "T"
    assert (record["level"], record["logger"], record["message"]) == (
        "INFO",
        "leaf_serve.rest",
        "POST /classify -> 200",
    )
    assert {k: record[k] for k in ("method", "path", "status", "duration", "model", "version")} == {
        **extra, "model": "m", "version": "v1"
    }  # fmt: skip


def test_process_context_joins_every_json_line_and_can_be_removed(captured):
    out = captured("json", static={"worker": 1})
    logs.set_context(run_id="leaf-train-train-29", version="20260101T000000Z-abc")
    logging.getLogger("leaf_train.pipeline").warning("phase 1 done")
    logs.set_context(version=None)
    logging.getLogger("leaf_train.pipeline").info("next")
    first, second = (json.loads(line) for line in out.getvalue().splitlines())
    assert (first["run_id"], first["version"], first["worker"]) == (
        "leaf-train-train-29",
        "20260101T000000Z-abc",
        1,
    )
    assert second["run_id"] == "leaf-train-train-29" and "version" not in second


HOSTILE = "/v2/models/x\n2026-01-01 00:00:00 ERROR forged line\x1b[2J\u2028é"


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_client_strings_cannot_forge_a_line_or_reach_the_terminal(captured, log_format):
    out = captured(log_format)
    logging.getLogger("leaf_serve.rest").warning("GET %s -> 404", HOSTILE, extra={"path": HOSTILE})
    text = out.getvalue()
    assert text.count("\n") == 1 and "\x1b" not in text and "\u2028" not in text
    if log_format == "json":
        record = json.loads(text)
        assert (
            record["path"] == HOSTILE and record["message"] == f"GET {HOSTILE} -> 404"
        )  # escaped, not lost
    else:
        assert "x\\n2026-01-01" in text and "\\x1b[2J" in text


def test_exceptions_stay_inside_the_json_line(captured):
    out = captured("json")
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        logging.getLogger("x").exception("failed")
    (line,) = out.getvalue().splitlines()
    assert "RuntimeError: boom" in json.loads(line)["exception"]


def test_configuring_again_replaces_the_handler_and_an_unknown_format_is_refused(captured):
    out = captured("text")
    captured("json")
    logging.getLogger("x").info("once")
    assert len(out.getvalue().splitlines()) == 1
    with pytest.raises(ValueError, match="expected one of text, json; received 'xml'"):
        logs.formatter("xml")


def test_without_a_stream_lines_go_to_the_stderr_of_the_moment(monkeypatch):
    """A server thread that logs after stderr was replaced (a redirect, the end of a test's capture)
    writes to the new stderr, not to the closed one it was configured under."""
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    first, second = io.StringIO(), io.StringIO()
    try:
        monkeypatch.setattr("sys.stderr", first)
        logs.configure("INFO", "text")
        logging.getLogger("x").info("one")
        first.close()
        monkeypatch.setattr("sys.stderr", second)
        logging.getLogger("x").info("two")
    finally:
        root.handlers[:], root.level = saved
    written = second.getvalue()
    assert "Logging error" not in written and written.count("\n") == 1, written
    assert written.rstrip().endswith("two"), written
