"""Storage: the same behaviour from a local folder and from S3 over HTTP (moto server)."""

from __future__ import annotations

import sys
import threading
import time

import pytest
from leaf_common.storage import (
    LocalStore,
    NotFound,
    PreconditionFailed,
    S3Store,
    StoreError,
    make_s3_client,
    open_store,
)


@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path):
    if request.param == "local":
        return open_store(str(tmp_path / "root"))
    s3 = request.getfixturevalue("s3")
    s3.make_bucket("store-test")
    return open_store("s3://store-test/some/prefix")


def test_put_get_list_head_delete(store):
    store.put("a/b.txt", b"one")
    store.put("a/c d (e),f.txt", b"two")
    store.put("z.bin", b"three")
    assert [o.key for o in store.list()] == ["a/b.txt", "a/c d (e),f.txt", "z.bin"]
    assert [o.key for o in store.list("a")] == ["a/b.txt", "a/c d (e),f.txt"]
    assert store.get("a/c d (e),f.txt") == b"two"
    info = store.head("z.bin")
    assert info is not None and info.size == 5
    store.delete("z.bin")
    assert store.head("z.bin") is None
    with pytest.raises(NotFound):
        store.get("z.bin")


def test_if_none_match_refuses_overwrite(store):
    store.put("v/model.onnx", b"first", if_none_match=True)
    with pytest.raises(PreconditionFailed):
        store.put("v/model.onnx", b"second", if_none_match=True)
    assert store.get("v/model.onnx") == b"first"


def test_if_match_is_compare_and_swap(store):
    etag = store.put("latest.json", b"v1")
    store.put("latest.json", b"v2", if_match=etag)
    with pytest.raises(PreconditionFailed):
        store.put("latest.json", b"v3", if_match=etag)  # stale ETag loses
    assert store.get("latest.json") == b"v2"


@pytest.mark.parametrize("condition", ["if_match", "if_none_match"])
def test_concurrent_conditional_writes_have_one_winner(store, condition: str):
    """Eight threads write one key at once under the same condition: one wins, seven are refused.

    On S3 this holds for moto as the suite runs it (testkit.moto_s3_server), as for AWS and MinIO.
    Threads switch every 10 µs here (5 ms by default) so that a check-then-write shows its gap."""
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)
    try:
        race(store, condition)
    finally:
        sys.setswitchinterval(interval)


def race(store, condition: str) -> None:  # noqa: ANN001 - a Store
    for round_ in range(20):
        key = f"p{round_}"
        etag = store.put(key, b"before") if condition == "if_match" else None
        wins = one_round(store, key, etag)
        assert len(wins) == 1, (round_, wins)
        assert store.get(key) == str(wins[0]).encode()


def one_round(store, key: str, etag: str | None) -> list[int]:  # noqa: ANN001 - a Store
    """Eight threads write ``key`` at the same moment; the ones whose write was accepted."""
    start, wins, refused = threading.Barrier(8), [], []

    def attempt(i: int) -> None:
        start.wait()
        try:
            if etag is None:
                store.put(key, str(i).encode(), if_none_match=True)
            else:
                store.put(key, str(i).encode(), if_match=etag)
            wins.append(i)
        except PreconditionFailed:
            refused.append(i)

    threads = [threading.Thread(target=attempt, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(wins) + len(refused) == 8, (wins, refused)  # every write answered, none raised else
    return wins


def test_child_store_is_rooted(store):
    child = store.child("x/y")
    child.put("k", b"v")
    assert store.get("x/y/k") == b"v"
    assert [o.key for o in child.list()] == ["k"]


@pytest.mark.parametrize(
    "uri, kind",
    [("s3://bucket/prefix", S3Store), ("/tmp/x", LocalStore), ("file:///tmp/x", LocalStore)],
)
def test_open_store_dispatch(uri, kind, monkeypatch):
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    assert isinstance(open_store(uri), kind)


@pytest.mark.parametrize("uri", ["gs://bucket/x", "s3://ab/x", "http://host/x"])
def test_bad_uris_say_what_was_expected(uri):
    with pytest.raises(StoreError, match="expected"):
        open_store(uri)


def test_local_store_refuses_escaping_keys(tmp_path):
    with pytest.raises(StoreError, match="escapes"):
        LocalStore(tmp_path).get("../../etc/passwd")


def test_local_store_whose_root_goes_through_a_symlink_accepts_its_keys(tmp_path):
    """A root reached through a link (a mounted volume, macOS's /tmp) is still the root."""
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    store = LocalStore(tmp_path / "link" / "registry")
    store.put("m/versions/v1/model.onnx", b"onnx", if_none_match=True)
    assert store.get("m/versions/v1/model.onnx") == b"onnx"
    assert [o.key for o in store.list()] == ["m/versions/v1/model.onnx"]
    assert [o.key for o in store.child("m").list("versions")] == ["versions/v1/model.onnx"]
    assert store.uri == str(tmp_path / "link" / "registry")  # logs keep the path the user gave
    (tmp_path / "outside").write_bytes(b"secret")
    with pytest.raises(StoreError, match="escapes"):
        store.get("../../outside")


def test_listing_and_head_say_when_an_object_was_last_written(store):
    before = time.time()
    store.put("a/old.txt", b"1")
    (listed,) = store.list("a")
    head = store.head("a/old.txt")
    # moto stamps LastModified to the second: allow that much rounding on either side.
    assert listed.modified is not None and before - 2 <= listed.modified <= time.time() + 2
    assert head is not None and head.modified == pytest.approx(listed.modified, abs=1)


def _signed_key_id(client) -> str:
    """The access key id in the Authorization header of the client's next request."""
    seen: list[str] = []
    client.meta.events.register(
        "before-send.s3", lambda request, **_: seen.append(request.headers["Authorization"])
    )
    client.list_buckets()
    return seen[0].decode() if isinstance(seen[0], bytes) else seen[0]


def test_clients_follow_the_environment_they_were_made_in(s3, monkeypatch):
    """Clients share one boto3 Session per AWS environment; a client made after the endpoint,
    region or credentials change must use the new ones, and an earlier client keeps its own."""
    first = make_s3_client()
    assert first.meta.endpoint_url == s3.url
    assert "Credential=testing/" in _signed_key_id(first)
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-1")
    moved = make_s3_client()
    assert (moved.meta.endpoint_url, moved.meta.region_name) == ("http://127.0.0.1:9", "eu-west-1")
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3.url)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "someone-else")
    assert "Credential=someone-else/" in _signed_key_id(make_s3_client())
    assert "Credential=testing/" in _signed_key_id(first)
