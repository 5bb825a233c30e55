"""A real store with a fault at a chosen call: the wrapper the fault-injection tests put around S3 or a folder.

Not a mock: every call goes through to the wrapped store (moto's S3 over HTTP, or a local folder)
until the chosen one. There an action runs instead of (or before) the call: ``kill`` stops the
caller dead, as SIGKILL or the OOM killer would (``Killed`` is a ``BaseException``, so no
``except Exception`` or ``except StoreError`` in the code under test can swallow it, and every
later call through the same plan fails too: a dead process writes nothing more); ``fail`` raises
the ``StoreError`` a storage outage produces; any other callable (another party's action in a race
test) runs and the call then goes through.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from leaf_common.storage import ObjectInfo, Store, StoreError


class Killed(BaseException):
    """The process died at this point (SIGKILL, OOM kill): nothing after it runs."""


def kill(call: str) -> None:
    raise Killed(f"killed before {call}")


def fail(call: str) -> None:
    raise StoreError(f"injected storage failure at {call}: 503 SlowDown")


@dataclass
class Plan:
    """What happens at which call; shared by a store and every child store made from it."""

    actions: dict[int, Callable[[str], None]] = field(default_factory=dict)
    # (glob, action): runs once, before the first call whose "op url" matches the glob ("put */latest.json").
    on_call: list[tuple[str, Callable[[str], None]]] = field(default_factory=list)
    calls: list[str] = field(
        default_factory=list
    )  # "op url", in order, for naming the step in failures
    dead: bool = False

    def before(self, op: str, url: str) -> None:
        if self.dead:
            raise Killed(f"{op} {url} after the process died")
        n, label = len(self.calls), f"{op} {url}"
        self.calls.append(label)
        action = self.actions.get(n)
        for i, (glob, on_call) in enumerate(self.on_call):
            if action is None and fnmatch.fnmatchcase(label, glob):
                action = on_call
                del self.on_call[i]
                break
        if action is None:
            return
        try:
            action(f"call {n}: {label}")
        except Killed:
            self.dead = True
            raise


class FaultyStore(Store):
    """``inner`` with ``plan``'s actions before the numbered calls (0-based, across child stores)."""

    def __init__(self, inner: Store, plan: Plan | None = None):
        self.inner, self.plan = inner, plan or Plan()
        self.uri = inner.uri

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        self.plan.before("list", self.inner.url(prefix))
        yield from self.inner.list(prefix)

    def get_with_etag(self, key: str) -> tuple[bytes, str]:
        self.plan.before("get", self.inner.url(key))
        return self.inner.get_with_etag(key)

    def head(self, key: str) -> ObjectInfo | None:
        self.plan.before("head", self.inner.url(key))
        return self.inner.head(key)

    def put(
        self, key: str, data: bytes, *, if_none_match: bool = False, if_match: str | None = None
    ) -> str:
        self.plan.before("put", self.inner.url(key))
        return self.inner.put(key, data, if_none_match=if_none_match, if_match=if_match)

    def delete(self, key: str) -> None:
        self.plan.before("delete", self.inner.url(key))
        self.inner.delete(key)

    def child(self, sub: str) -> FaultyStore:
        return FaultyStore(self.inner.child(sub), self.plan)
