"""``leaf-serve --log-format json``: every line a real server writes is one JSON object; requests carry their fields."""

from __future__ import annotations

import json

import httpx
from servekit import wait_for
from test_serve_cli import leaf_serve
from test_serve_processes import BODY


def lines_of(proc) -> list[dict]:
    proc.terminate()
    out, _ = proc.communicate(timeout=30)
    assert out.strip(), "the server wrote nothing"
    return [json.loads(line) for line in out.splitlines()]  # a line that is not JSON fails here


def test_json_logs_from_start_to_stop_with_request_fields(local_registry):
    with leaf_serve(
        model=local_registry.pointer_uri, log_format="json", log_level="debug", drain_delay=0
    ) as (
        proc,
        url,
    ):
        assert httpx.post(url + "/v2/models/leaf/infer", json=BODY).status_code == 200
        # A client-supplied name with a newline and an escape sequence: escaped inside the JSON, never a new line.
        assert httpx.get(url + "/v2/models/no%0Asuch%1B[2J/ready").status_code == 404
        records = lines_of(proc)
    assert all({"time", "level", "logger", "message"} <= set(r) for r in records)
    loggers = {r["logger"] for r in records}
    assert (
        "uvicorn.error" in loggers and "leaf_serve.repository" in loggers
    )  # uvicorn's own lines too
    by_path = {r["path"]: r for r in records if "path" in r}
    ok = by_path["/v2/models/leaf/infer"]
    assert (ok["method"], ok["status"], ok["model"], ok["version"], ok["level"]) == (
        "POST",
        200,
        "leaf",
        "v1",
        "DEBUG",
    )
    assert 0 < ok["duration"] < 10
    refused = by_path["/v2/models/no\nsuch\x1b[2J/ready"]
    assert (refused["status"], refused["level"]) == (404, "WARNING") and "unknown model" in refused[
        "message"
    ]


def test_text_logs_escape_client_strings(local_registry):
    with leaf_serve(model=local_registry.pointer_uri, drain_delay=0) as (proc, url):
        assert httpx.get(url + "/v2/models/no%0Asuch/ready").status_code == 404
        proc.terminate()
        out, _ = proc.communicate(timeout=30)
    (line,) = [line for line in out.splitlines() if "/ready' -> 404" in line]
    # quoted (repr) and cut, as every client-supplied value in a line (issue 20): the newline stays two characters
    assert "'/v2/models/no\\nsuch/ready' -> 404" in line and " WARNING leaf_serve.rest: " in line


def test_each_worker_says_which_it_is(local_registry):
    with leaf_serve(
        model=local_registry.pointer_uri, log_format="json", processes=2, drain_delay=0
    ) as (proc, url):
        # Both workers have their model (one info series each), not only the one that answered the probe.
        wait_for(
            lambda: httpx.get(url + "/metrics").text.count("leaf_serve_model_info{") == 2,
            "both models",
        )
        records = lines_of(proc)
    serving = [
        r
        for r in records
        if r["logger"] == "leaf_serve.repository" and r["message"].startswith("serving")
    ]
    assert sorted(r["worker"] for r in serving) == [0, 1]
    assert any(
        r["logger"] == "leaf_serve.supervisor" and "worker" not in r for r in records
    )  # the supervisor's own
