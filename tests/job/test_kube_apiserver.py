"""A Kubernetes API endpoint on loopback that checks what the real ``kubernetes`` client sends.

No API server exists on the test machines, so the client code talks HTTP to this one. Each
request's verb and path must be one of the Kubernetes API routes in ``ROUTES`` (written from
the API reference for the resources leaf-train uses); create bodies and the objects patches
produce are validated against the Kubernetes OpenAPI schemas (kubernetes-validate, strict:
unknown fields fail), plus the rules the API server adds for events.k8s.io/v1 (required
fields, lengths). Anything else is recorded in ``errors`` and answered like the API server
would (400/404/415/422); the ``apiserver`` fixture fails the test if any error was recorded.

The tests at the bottom prove the checker itself can fail.
"""

from __future__ import annotations

import copy
import json
import re
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import kubernetes_validate
import pytest
import requests

KUBE_VERSION = "1.33"  # the oldest minor the chart's kubeVersion admits that the schemas cover well
TOKEN = "test-token"

_NS = r"/namespaces/(?P<ns>[a-z0-9-]+)"
_NAME = r"/(?P<name>[a-z0-9.-]+)"
# (verb, path regex) -> (resource key, apiVersion, kind, action)
ROUTES: list[tuple[str, re.Pattern[str], tuple[str, str, str, str]]] = [
    (verb, re.compile(f"^{path}$"), target)
    for verb, path, target in [
        ("GET", f"/apis/batch/v1{_NS}/jobs{_NAME}", ("jobs", "batch/v1", "Job", "get")),
        ("PATCH", f"/apis/batch/v1{_NS}/jobs{_NAME}", ("jobs", "batch/v1", "Job", "patch")),
        ("GET", f"/apis/batch/v1{_NS}/jobs", ("jobs", "batch/v1", "Job", "list")),
        ("POST", f"/apis/batch/v1{_NS}/jobs", ("jobs", "batch/v1", "Job", "create")),
        ("GET", f"/apis/batch/v1{_NS}/cronjobs{_NAME}", ("cronjobs", "batch/v1", "CronJob", "get")),
        (
            "POST",
            f"/apis/events.k8s.io/v1{_NS}/events",
            ("events", "events.k8s.io/v1", "Event", "create"),
        ),
        (
            "GET",
            f"/apis/events.k8s.io/v1{_NS}/events",
            ("events", "events.k8s.io/v1", "Event", "list"),
        ),
        ("GET", f"/api/v1{_NS}/events", ("events", "v1", "Event", "list-core")),
        (
            "GET",
            f"/apis/apps/v1{_NS}/deployments{_NAME}",
            ("deployments", "apps/v1", "Deployment", "get"),
        ),
        (
            "PATCH",
            f"/apis/apps/v1{_NS}/deployments{_NAME}",
            ("deployments", "apps/v1", "Deployment", "patch"),
        ),
    ]
]
PATCH_TYPES = ("application/merge-patch+json", "application/strategic-merge-patch+json")


def _route(verb: str, path: str) -> tuple[re.Match[str], tuple[str, str, str, str]] | None:
    for rverb, pattern, target in ROUTES:
        m = pattern.match(path)
        if rverb == verb and m:
            return m, target
    return None


def status(code: int, reason: str, message: str) -> dict[str, Any]:
    """A metav1.Status body, as the API server returns with every error."""
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def schema_errors(obj: dict[str, Any]) -> list[str]:
    """Strict OpenAPI-schema validation; [] when the object is valid."""
    try:
        kubernetes_validate.validate(obj, KUBE_VERSION, strict=True)
    except kubernetes_validate.ValidationError as e:
        path = ".".join(str(p) for p in e.path)
        return [f"{obj.get('kind')}: {path}: {e.message}"]
    return []


def event_errors(ev: dict[str, Any]) -> list[str]:
    """What the API server's events.k8s.io/v1 validation adds to the schema."""
    errors = [
        f"Event: {f} is required"
        for f in (
            "eventTime",
            "reportingController",
            "reportingInstance",
            "action",
            "reason",
            "type",
            "regarding",
        )
        if not ev.get(f)
    ]
    if ev.get("type") not in ("Normal", "Warning"):
        errors.append(f"Event: type must be Normal or Warning, got {ev.get('type')!r}")
    for f in ("action", "reason", "reportingInstance"):
        if len(ev.get(f, "")) > 128:
            errors.append(f"Event: {f} longer than 128 characters")
    if len(ev.get("note", "")) > 1024:
        errors.append("Event: note longer than 1 kB")
    return errors


class FakeApiServer:
    """The state and routing; one instance per test."""

    def __init__(self) -> None:
        self.objects: dict[tuple[str, str, str], dict[str, Any]] = {}
        self.requests: list[tuple[str, str, Any]] = []  # (verb, path, body) of every request
        self.errors: list[str] = []  # protocol violations by the client under test
        self.forbidden: set[tuple[str, str]] = set()  # (verb, resource) answered 403
        self.lock = threading.Lock()
        self._httpd: ThreadingHTTPServer | None = None
        self.url = ""

    # --- test set-up helpers ---
    def add(self, obj: dict[str, Any]) -> dict[str, Any]:
        """Store an object (validated) as if it had been created earlier."""
        assert not schema_errors(obj), schema_errors(obj)
        obj = copy.deepcopy(obj)
        meta = obj["metadata"]
        meta.setdefault("uid", str(uuid.uuid4()))
        meta.setdefault("creationTimestamp", _now())
        resource = {"Job": "jobs", "CronJob": "cronjobs", "Deployment": "deployments"}[obj["kind"]]
        self.objects[(resource, meta["namespace"], meta["name"])] = obj
        return obj

    def get(self, resource: str, ns: str, name: str) -> dict[str, Any]:
        return self.objects[(resource, ns, name)]

    def of(self, resource: str) -> list[dict[str, Any]]:
        return [o for (r, _, _), o in self.objects.items() if r == resource]

    # --- HTTP ---
    def handle(
        self, verb: str, raw_path: str, headers: Any, body: bytes
    ) -> tuple[int, dict[str, Any]]:
        url = urlsplit(raw_path)
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        if headers.get("Authorization") != f"Bearer {TOKEN}":
            self.errors.append(f"{verb} {url.path}: missing or wrong bearer token")
            return 401, status(401, "Unauthorized", "Unauthorized")
        route = _route(verb, url.path)
        if route is None:
            self.errors.append(f"{verb} {url.path}: not a Kubernetes API route leaf-train may use")
            return 404, status(
                404, "NotFound", f"the server could not find the requested resource ({url.path})"
            )
        m, (resource, api_version, kind, action) = route
        payload = json.loads(body) if body else None
        with self.lock:
            self.requests.append((verb, url.path, payload))
            if (verb, resource) in self.forbidden:
                return 403, status(
                    403, "Forbidden", f"{resource} is forbidden: User cannot {action} {resource}"
                )
            ns, name = m.group("ns"), m.groupdict().get("name")
            handler = getattr(self, "_" + action.replace("-", "_"))
            return handler(resource, api_version, kind, ns, name, payload, headers, query)

    def _get(self, resource, api_version, kind, ns, name, payload, headers, query):
        obj = self.objects.get((resource, ns, name))
        if obj is None:
            return 404, status(404, "NotFound", f'{resource} "{name}" not found')
        return 200, obj

    def _list(self, resource, api_version, kind, ns, name, payload, headers, query):
        items = [o for (r, n, _), o in self.objects.items() if r == resource and n == ns]
        return 200, {
            "apiVersion": api_version,
            "kind": f"{kind}List",
            "metadata": {},
            "items": items,
        }

    def _list_core(self, resource, api_version, kind, ns, name, payload, headers, query):
        """core/v1 view of events.k8s.io/v1 Events (one storage, two APIs), with field selectors."""
        wanted = dict(p.split("=", 1) for p in query.get("fieldSelector", "").split(",") if p)
        for key in wanted:
            if key not in (
                "involvedObject.kind",
                "involvedObject.name",
                "involvedObject.namespace",
            ):
                self.errors.append(f"events fieldSelector {key!r} is not a supported field")
        items = []
        for (r, n, _), ev in self.objects.items():
            if r != "events" or n != ns:
                continue
            involved = {f"involvedObject.{k}": v for k, v in ev["regarding"].items()}
            if any(involved.get(k) != v for k, v in wanted.items()):
                continue
            items.append(
                {
                    "apiVersion": "v1",
                    "kind": "Event",
                    "metadata": ev["metadata"],
                    "involvedObject": ev["regarding"],
                    "reason": ev["reason"],
                    "message": ev.get("note", ""),
                    "type": ev["type"],
                    "eventTime": ev["eventTime"],
                    "reportingComponent": ev["reportingController"],
                    "reportingInstance": ev["reportingInstance"],
                    "action": ev["action"],
                }
            )
        return 200, {"apiVersion": "v1", "kind": "EventList", "metadata": {}, "items": items}

    def _create(self, resource, api_version, kind, ns, name, payload, headers, query):
        if not isinstance(payload, dict):
            self.errors.append(f"create {resource}: body is not an object")
            return 400, status(400, "BadRequest", "body must be an object")
        obj = copy.deepcopy(payload)
        if obj.get("apiVersion", api_version) != api_version or obj.get("kind", kind) != kind:
            self.errors.append(
                f"create {resource}: body is {obj.get('apiVersion')}/{obj.get('kind')}"
            )
        obj["apiVersion"], obj["kind"] = api_version, kind
        meta = obj.setdefault("metadata", {})
        if meta.get("namespace", ns) != ns:
            self.errors.append(
                f"create {resource}: namespace {meta['namespace']!r} differs from the path's {ns!r}"
            )
        meta["namespace"] = ns
        if not meta.get("name"):
            if not meta.get("generateName"):
                self.errors.append(f"create {resource}: neither name nor generateName")
                return 422, status(422, "Invalid", "name or generateName is required")
            meta["name"] = meta["generateName"] + uuid.uuid4().hex[:5]
        problems = schema_errors(obj) + (event_errors(obj) if kind == "Event" else [])
        if problems:
            self.errors.extend(problems)
            return 422, status(422, "Invalid", "; ".join(problems))
        if (resource, ns, meta["name"]) in self.objects:
            return 409, status(409, "AlreadyExists", f'{resource} "{meta["name"]}" already exists')
        meta["uid"] = str(uuid.uuid4())
        meta["creationTimestamp"] = _now()
        self.objects[(resource, ns, meta["name"])] = obj
        return 201, obj

    def _patch(self, resource, api_version, kind, ns, name, payload, headers, query):
        ctype = headers.get("Content-Type", "")
        if ctype not in PATCH_TYPES:
            self.errors.append(
                f"patch {resource}/{name}: content type {ctype!r}, expected one of {PATCH_TYPES}"
            )
            return 415, status(
                415,
                "UnsupportedMediaType",
                f"the body of the request was in an unknown format: {ctype}",
            )
        obj = self.objects.get((resource, ns, name))
        if obj is None:
            return 404, status(404, "NotFound", f'{resource} "{name}" not found')
        if not isinstance(payload, dict):
            self.errors.append(f"patch {resource}/{name}: a merge patch must be an object")
            return 400, status(400, "BadRequest", "merge patch must be an object")
        patched = merge_patch(obj, payload)
        problems = schema_errors(patched)
        if problems:
            self.errors.extend(problems)
            return 422, status(422, "Invalid", "; ".join(problems))
        self.objects[(resource, ns, name)] = patched
        return 200, patched

    def start(self) -> None:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                code, body = server.handle(
                    self.command, self.path, self.headers, self.rfile.read(length)
                )
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PATCH = do_PUT = do_DELETE = _serve

            def log_message(self, *args: Any) -> None:  # keep test output quiet
                pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}"
        # shutdown() waits for serve_forever's next poll: the default half second was most of each
        # test's time.
        serve = lambda: self._httpd.serve_forever(poll_interval=0.01)  # noqa: E731
        threading.Thread(target=serve, daemon=True).start()

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()

    def client(self) -> Any:
        """A real ``kubernetes.client.ApiClient`` pointed at this endpoint."""
        from kubernetes import client

        conf = client.Configuration(
            host=self.url,
            api_key={"authorization": TOKEN},
            api_key_prefix={"authorization": "Bearer"},
        )
        return client.ApiClient(conf)

    def kubeconfig(self, path: Any, namespace: str = "ml") -> str:
        """Write a kubeconfig pointing at this endpoint; returns its path."""
        doc = {
            "apiVersion": "v1",
            "kind": "Config",
            "current-context": "test",
            "clusters": [{"name": "fake", "cluster": {"server": self.url}}],
            "users": [{"name": "u", "user": {"token": TOKEN}}],
            "contexts": [
                {
                    "name": "test",
                    "context": {"cluster": "fake", "user": "u", "namespace": namespace},
                }
            ],
        }
        path.write_text(json.dumps(doc))
        return str(path)


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@pytest.fixture
def apiserver() -> Iterator[FakeApiServer]:
    """A fresh fake API server; the test fails if the client broke the protocol."""
    server = FakeApiServer()
    server.start()
    try:
        yield server
    finally:
        server.stop()
    assert server.errors == [], f"requests the Kubernetes API would reject: {server.errors}"


def job_object(name: str = "leaf-train-train-1", ns: str = "ml") -> dict[str, Any]:
    """A minimal valid batch/v1 Job like the chart's."""
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": name,
            "namespace": ns,
            "labels": {"app.kubernetes.io/component": "training"},
        },
        "spec": {
            "template": {
                "spec": {
                    "restartPolicy": "Never",
                    "containers": [
                        {"name": "train", "image": "ghcr.io/x/job:1", "args": ["train"]}
                    ],
                }
            }
        },
    }


# --- the checker must be able to fail: each of these is a request the real API server refuses ---


def _raw(
    server: FakeApiServer, verb: str, path: str, body: Any = None, ctype: str = "application/json"
) -> int:
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": ctype}
    data = None if body is None else json.dumps(body)
    return requests.request(
        verb, server.url + path, data=data, headers=headers, timeout=10
    ).status_code


@pytest.mark.parametrize(
    ("verb", "path", "body", "ctype", "code", "error"),
    [
        (
            "DELETE",
            "/apis/batch/v1/namespaces/ml/jobs/j",
            None,
            "application/json",
            404,
            "not a Kubernetes API route",
        ),
        (
            "GET",
            "/apis/batch/v2/namespaces/ml/jobs/j",
            None,
            "application/json",
            404,
            "not a Kubernetes API route",
        ),
        (
            "POST",
            "/apis/batch/v1/namespaces/ml/jobs",
            {**job_object(), "spec": {"template": {}, "bogus": 1}},
            "application/json",
            422,
            "Job",
        ),
        (
            "POST",
            "/apis/events.k8s.io/v1/namespaces/ml/events",
            {"metadata": {"generateName": "x."}, "reason": "Started"},
            "application/json",
            422,
            "is required",
        ),
        (
            "PATCH",
            "/apis/batch/v1/namespaces/ml/jobs/leaf-train-train-1",
            [{"op": "add", "path": "/metadata/annotations", "value": {}}],
            "application/json-patch+json",
            415,
            "content type",
        ),
        (
            "PATCH",
            "/apis/batch/v1/namespaces/ml/jobs/leaf-train-train-1",
            {"metadata": {"annotations": {"a": 1}}},
            "application/merge-patch+json",
            422,
            "Job",
        ),
    ],
)
def test_checker_rejects_what_the_api_server_rejects(verb, path, body, ctype, code, error):
    server = FakeApiServer()
    server.start()
    try:
        server.add(job_object())
        assert _raw(server, verb, path, body, ctype) == code
        assert any(error in e for e in server.errors), server.errors
    finally:
        server.stop()


def test_checker_requires_the_bearer_token():
    server = FakeApiServer()
    server.start()
    try:
        r = requests.get(server.url + "/apis/batch/v1/namespaces/ml/jobs", timeout=10)
        assert r.status_code == 401
        assert server.errors == [
            "GET /apis/batch/v1/namespaces/ml/jobs: missing or wrong bearer token"
        ]
    finally:
        server.stop()
