"""``/review``: the token, the grid's data, accept and reject, on S3 over HTTP (app in-process).

Requests refused before they change anything share one loop in local folders per module.
"""

from __future__ import annotations

import base64
import logging
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from leaf_common.config import ConfigError
from leaf_common.inbox import Inbox
from leaf_common.storage import Store, open_store
from leaf_serve.settings import ServeConfig
from servekit import V1, AppClient, Registry, encode_image, in_process

TOKEN = "review-token-0123456789abcdef"
GREY = encode_image((128, 128, 128), "JPEG")
BEARER = {"Authorization": f"Bearer {TOKEN}"}
BASIC = {
    "Authorization": "Basic " + base64.b64encode(f"reviewer:{TOKEN}".encode()).decode()
}  # what a browser sends


@dataclass
class Loop:
    server: AppClient
    data: Store
    inbox: Store

    def capture(self) -> str:
        r = self.server.post("/classify", content=GREY)
        assert self.server.app.state.capture.join(10)
        assert r.json()["captured"], r.json()  # kept, not dropped by a capture limit
        return r.json()["captured"]

    def kept(self, capture_id: str) -> bytes:
        """The photo as the inbox holds it (re-encoded at capture): what accept copies into the data."""
        return Inbox(self.inbox).photo(capture_id)[1]


@contextmanager
def review_loop(models: str, data_uri: str, token_dir: Path, **overrides: object) -> Iterator[Loop]:
    """v1 published under ``models``, an app with capture and review on; photos go to ``data_uri``."""
    reg = Registry(models)
    reg.publish("v1", V1)
    reg.promote("v1")
    data = open_store(data_uri)
    data.put("rust/existing.jpg", b"x")
    token_file = token_dir / "token"
    token_file.write_text(TOKEN + "\n")  # a Secret's file may end in a newline
    with in_process(
        reg.pointer_uri,
        poll_interval=0,
        capture=True,
        review_token_file=str(token_file),
        data=data_uri,
        **overrides,
    ) as running:
        yield Loop(running, data, open_store(f"{models}/leaf/inbox"))


@pytest.fixture
def loop(s3, tmp_path) -> Iterator[Loop]:
    """The loop on S3 over HTTP, fresh for each test."""
    s3.make_bucket("models")
    s3.make_bucket("photos")
    with review_loop("s3://models/registry", "s3://photos/pv", tmp_path) as made:
        yield made


@pytest.fixture(scope="module")
def local_loop(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Loop]:
    """The loop in local folders, one per module: for requests refused before they change anything,
    with room for every capture and wrong token the module sends (the limits have their own tests)."""
    root = tmp_path_factory.mktemp("loop")
    roomy = {
        "review_failed_logins": 1000,
        "capture_per_minute": 1000,
        "capture_per_client_per_minute": 1000,
    }
    with review_loop(str(root / "models"), str(root / "pv"), root, **roomy) as made:
        yield made


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/review"),
        ("GET", "/review/items"),
        ("GET", "/review/items/capture-20260514T101502000Z-3f9a1c2b7d/photo"),
        ("POST", "/review/items/capture-20260514T101502000Z-3f9a1c2b7d/accept"),
        ("POST", "/review/items/capture-20260514T101502000Z-3f9a1c2b7d/reject"),
    ],
)
@pytest.mark.parametrize(
    ("headers", "fragment"),
    [
        ({}, "expected the review token"),
        ({"Authorization": "Bearer wrong-token-0123456789"}, "is not the review token"),
        (
            {"Authorization": "Basic bm90LWJhc2U2NA=="},
            "expected the review token",
        ),  # "not-base64", no colon
        ({"Authorization": "Basic dXNlcjp3cm9uZw=="}, "is not the review token"),  # user:wrong
        ({"Authorization": TOKEN}, "expected the review token"),  # no scheme
    ],
)
def test_every_review_request_without_the_token_is_401(
    local_loop: Loop, method, path, headers, fragment
) -> None:
    r = local_loop.server.request(
        method, path, headers={**headers, "Content-Type": "application/json"}
    )
    assert r.status_code == 401, r.text
    assert fragment in r.json()["error"]
    assert r.headers["www-authenticate"].startswith('Basic realm="leaf-serve review"')


@pytest.mark.parametrize("auth", [BEARER, BASIC])
def test_the_token_opens_the_page_and_the_grid(loop: Loop, auth) -> None:
    older, newer = loop.capture(), loop.capture()
    page = loop.server.get("/review", headers=auth)
    assert page.status_code == 200 and "Review the inbox" in page.text
    r = loop.server.get("/review/items", headers=auth)
    assert r.status_code == 200, r.text
    body = r.json()
    assert [i["id"] for i in body["items"]] == [newer, older]  # newest first
    assert body["labels"][0] == {"label": "healthy", "display": "Healthy"}
    assert (body["inbox"], body["data"]) == ("s3://models/registry/leaf/inbox", "s3://photos/pv")
    photo = loop.server.get(body["items"][0]["photo"], headers=auth)
    assert (
        photo.content == loop.kept(body["items"][0]["id"])
        and photo.headers["content-type"] == "image/jpeg"
    )


def test_accept_moves_the_photo_into_the_data_prefix(loop: Loop) -> None:
    capture_id = loop.capture()
    kept = loop.kept(capture_id)
    r = loop.server.post(
        f"/review/items/{capture_id}/accept", headers=BEARER, json={"label": "rust"}
    )
    assert r.status_code == 200, r.text
    assert r.json()["accepted"] == f"s3://photos/pv/rust/{capture_id}.jpg"
    assert loop.data.get(f"rust/{capture_id}.jpg") == kept
    assert list(loop.inbox.list()) == []
    again = loop.server.post(
        f"/review/items/{capture_id}/accept", headers=BEARER, json={"label": "rust"}
    )
    assert again.status_code == 404 and "it is not there" in again.json()["error"]


def test_a_new_class_needs_confirming(loop: Loop) -> None:
    capture_id = loop.capture()
    kept = loop.kept(capture_id)
    url = f"/review/items/{capture_id}/accept"
    r = loop.server.post(url, headers=BEARER, json={"label": "Tomato___Leaf_Mold"})
    assert r.status_code == 409 and "expected an existing class folder" in r.json()["error"]
    r = loop.server.post(
        url, headers=BEARER, json={"label": "Tomato___Leaf_Mold", "new_class": True}
    )
    assert r.status_code == 200
    assert loop.data.get(f"Tomato___Leaf_Mold/{capture_id}.jpg") == kept


def test_accept_never_overwrites_the_data(loop: Loop) -> None:
    capture_id = loop.capture()
    loop.data.put(f"rust/{capture_id}.jpg", b"another photo")
    r = loop.server.post(
        f"/review/items/{capture_id}/accept", headers=BEARER, json={"label": "rust"}
    )
    assert r.status_code == 409 and "exists with other bytes" in r.json()["error"]
    assert loop.data.get(f"rust/{capture_id}.jpg") == b"another photo"


def test_not_a_leaf_deletes_it(loop: Loop) -> None:
    capture_id = loop.capture()
    r = loop.server.post(f"/review/items/{capture_id}/reject", headers=BEARER, json={})
    assert r.status_code == 200 and r.json() == {"id": capture_id, "rejected": True}
    assert list(loop.inbox.list()) == []
    assert [o.key for o in loop.data.list()] == ["rust/existing.jpg"]


@pytest.mark.parametrize(
    ("path", "kwargs", "status", "fragment"),
    [
        ("accept", {"content": b"label=rust", "headers": {"Content-Type": "application/x-www-form-urlencoded"}},
         415, "Content-Type: expected application/json"),  # what a form on another site can send
        ("accept", {"json": {"label": 3}}, 400, "expected a JSON object with a string 'label'"),
        ("accept", {"json": {"label": "rust", "new_class": "yes"}}, 400, "expected 'new_class' true or false"),
        ("accept", {"json": {"label": "../../models"}}, 400, "class name: expected 1-100 characters"),
        ("accept", {"json": ["rust"]}, 400, "body: expected a JSON object; received list"),
        ("accept", {"content": b"{", "headers": {"Content-Type": "application/json"}}, 400, "body: expected a JSON"),
        ("reject", {"content": b"{}", "headers": {"Content-Type": "text/plain"}}, 415, "expected application/json"),
    ],
)  # fmt: skip
def test_bad_review_requests_are_4xx(local_loop: Loop, path, kwargs, status, fragment) -> None:
    capture_id = local_loop.capture()
    kwargs = dict(kwargs)  # the parameter's dict is shared: popping from it would change a rerun
    headers = {**BEARER, **kwargs.pop("headers", {})}
    r = local_loop.server.post(f"/review/items/{capture_id}/{path}", headers=headers, **kwargs)
    assert r.status_code == status, r.text
    assert fragment in r.json()["error"]
    assert Inbox(local_loop.inbox).get(capture_id).id == capture_id  # still there


@pytest.mark.parametrize(
    "capture_id",
    [
        "capture-x",
        "capture-20260514T101502000Z-3F9A1C2B7D",
        "capture-20260514T101502000Z-3f9a1c2b7d.jpg",
    ],
)
def test_bad_ids_are_400(local_loop: Loop, capture_id: str) -> None:
    r = local_loop.server.get(f"/review/items/{capture_id}/photo", headers=BEARER)
    assert r.status_code == 400 and "expected capture-YYYYMMDDTHHMMSSmmmZ" in r.json()["error"]


def test_review_is_a_404_without_a_token(client: AppClient) -> None:
    r = client.get("/review", headers=BEARER)
    assert r.status_code == 404 and "expected --review-token-file" in r.json()["error"]


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        (
            {"review_token_file": "TOKEN", "data": ""},
            "--data (LEAF_SERVE_DATA): expected the training data URI",
        ),
        (
            {"review_token_file": "/nonexistent/token", "data": "/d"},
            "TOKEN_FILE): expected a readable file",
        ),
        (
            {"review_token_file": "SHORT", "data": "/d"},
            "expected a token of at least 16 printable characters",
        ),
        (
            {"review_token_file": "SAME", "data": "/d"},
            "expected a random token (about 64 bits or more",
        ),
        (
            {"review_token_file": "CYCLE", "data": "/d"},
            "received 24 characters estimated at 48 bits",
        ),
        ({"capture": True, "model": "/model"}, "--inbox (LEAF_SERVE_INBOX): expected a URI"),
        ({"confidence_threshold": 1.5}, "THRESHOLD): expected a number from 0 to 1, received 1.5"),
        (
            {"capture_per_minute": 0},
            "(LEAF_SERVE_CAPTURE_PER_MINUTE): expected an integer >= 1, received 0",
        ),
    ],
)
def test_loop_options_are_checked_at_start(tmp_path, overrides: dict, fragment: str) -> None:
    (tmp_path / "TOKEN").write_text(TOKEN)
    (tmp_path / "SHORT").write_text("abc")
    (tmp_path / "SAME").write_text("a" * 16)  # issue 20: accepted before
    (tmp_path / "CYCLE").write_text("abcd" * 6)
    for key in ("review_token_file",):
        if key in overrides and not overrides[key].startswith("/"):
            overrides[key] = str(tmp_path / overrides[key])
    config = ServeConfig(**{"model": "s3://b/r/leaf/latest.json", **overrides})
    with pytest.raises(ConfigError, match=re.escape(fragment)):
        config.validate()
        config.derive()  # reads the token file


def post_at_once(client: AppClient, requests: list[tuple[str, dict]]) -> list[httpx.Response]:
    """POST every (path, json) at the same moment, each from its own thread: the app runs them at
    once."""
    start = threading.Barrier(len(requests))
    answers: list = [None] * len(requests)

    def send(i: int) -> None:
        path, body = requests[i]
        start.wait()
        answers[i] = client.post(path, headers=BEARER, json=body)

    threads = [threading.Thread(target=send, args=(i,)) for i in range(len(requests))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return answers


@pytest.mark.parametrize("rival", ["accept", "reject"])
def test_two_concurrent_decisions_one_wins_the_other_gets_409(loop: Loop, rival: str) -> None:
    loop.data.put("healthy/existing.jpg", b"x")
    for _ in range(4):  # issue 20: 4 of 4 tries put the photo in both classes, both answered 200
        capture_id = loop.capture()
        item = f"/review/items/{capture_id}"
        second = (
            (f"{item}/accept", {"label": "healthy"})
            if rival == "accept"
            else (f"{item}/reject", {})
        )
        answers = post_at_once(loop.server, [(f"{item}/accept", {"label": "rust"}), second])
        codes = sorted(a.status_code for a in answers)
        assert codes[0] == 200 and codes[1] in (404, 409), [a.text for a in answers]
        if codes[1] == 409:
            assert (
                "another one is running"
                in next(a for a in answers if a.status_code == 409).json()["error"]
            )
        copies = [o.key for o in loop.data.list() if capture_id in o.key]
        assert len(copies) <= 1, copies  # never in two classes
        assert not [
            o.key for o in loop.inbox.list() if capture_id in o.key
        ]  # record, photo and claim gone


def test_wrong_tokens_are_limited_per_client_and_logged_once(s3, tmp_path, caplog) -> None:
    s3.make_bucket("models")
    reg = Registry("s3://models/registry")
    reg.publish("v1", V1)
    reg.promote("v1")
    (tmp_path / "token").write_text(TOKEN)
    with in_process(
        reg.pointer_uri, poll_interval=0, capture=True, review_token_file=str(tmp_path / "token"), data="s3://photos/pv",
        review_failed_logins=3, review_login_window=60,
    ) as running:  # fmt: skip
        caplog.set_level(logging.INFO, logger="leaf_serve")
        assert running.get("/review").status_code == 401  # no token at all: not a failure, no line
        wrong = {"Authorization": "Bearer not-the-token-0123456789"}
        codes = [running.get("/review/items", headers=wrong).status_code for _ in range(5)]
        assert codes == [401, 401, 401, 429, 429]
        refused = running.get("/review/items", headers=BEARER)  # the right token, from the guesser
        assert refused.status_code == 429 and 0 < int(refused.headers["retry-after"]) <= 60
        assert "expected at most 3 wrong tokens in 60 s from one client" in refused.json()["error"]
        lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
        assert len(lines) == 1 and "a wrong token from 127.0.0.1" in lines[0], lines
        assert TOKEN not in caplog.text and "not-the-token" not in caplog.text
