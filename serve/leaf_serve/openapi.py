"""The OpenAPI 3.1 document of every HTTP route, served at ``/openapi.json``.

Each route the server registers has an entry in :data:`OPERATIONS` keyed by (path, verb); the tests
check both sets are equal and validate real responses against the schemas (JSON Schema 2020-12).
"""

from __future__ import annotations

from typing import Any

from leaf_common import formats
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from . import codecs

OPENAPI_PATH = "/openapi.json"
_JSON = "application/json"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {_JSON: {"schema": schema}}}


def _error(description: str) -> dict[str, Any]:
    return _json(_ref("Error"), description)


def _op(summary: str, tag: str, responses: dict[str, Any], **more: Any) -> dict[str, Any]:
    return {"summary": summary, "tags": [tag], "responses": responses, **more}


_NAME = {
    "name": "name",
    "in": "path",
    "required": True,
    "schema": {"type": "string"},
    "description": "model name",
}
_VERSION = {"name": "version", "in": "path", "required": True, "schema": {"type": "string"}}
_TOP_K = {
    "name": "top_k",
    "in": "query",
    "required": False,
    "schema": {"type": "integer", "minimum": 1},
    "description": "labels to return (default: the server's --top-k)",
}
# The image endpoints' body: a marker, filled in from leaf_common.formats when the document is
# built.
_IMAGE_BODY: dict[str, Any] = {}


def _image_body() -> dict[str, Any]:
    raw = (*formats.mime_types(), "application/octet-stream")
    form = {
        "type": "object",
        "properties": {"file": {"type": "string", "contentMediaType": raw[-1]}},
    }
    return {
        "required": True,
        "description": f"one {formats.names()} photo, raw or as the file field of a form",
        "content": {
            **{t: {"schema": {"type": "string", "contentMediaType": t}} for t in raw},
            "multipart/form-data": {"schema": form},
        },
    }


_INFER_BODY = {
    "required": True,
    "description": (
        "A v2 inference request: JSON, or (binary tensor data extension) a JSON header of "
        f"{codecs.HEADER_LENGTH} bytes followed by the raw little-endian tensors, each input "
        "saying its "
        "size in parameters.binary_data_size"
    ),
    "content": {
        _JSON: {"schema": _ref("InferRequest")},
        "application/octet-stream": {
            "schema": {
                "type": "string",
                "contentMediaType": "application/octet-stream",
                "description": (
                    f"JSON header ({codecs.HEADER_LENGTH} bytes, an InferRequest) + binary tensors"
                ),
            },
        },
    },
}
_HEADER_LENGTH = {
    "name": codecs.HEADER_LENGTH,
    "in": "header",
    "required": False,
    "schema": {"type": "integer", "minimum": 0},
    "description": "length of the JSON header when the body carries binary tensors",
}
_INFER_OK = {
    "description": "outputs as JSON, or a JSON header followed by binary outputs "
    "(binary_data requested)",
    "headers": {
        codecs.HEADER_LENGTH: {
            "schema": {"type": "integer"},
            "description": "length of the JSON header, when outputs are binary",
        }
    },
    "content": {
        _JSON: {"schema": _ref("InferResponse")},
        "application/octet-stream": {
            "schema": {"type": "string", "contentMediaType": "application/octet-stream"}
        },
    },
}
_SHED = _error("not ready, draining, or load shed (queue full, memory budget spent)")
_REFUSED = {
    "400": _error("malformed request: the message says what was expected and what was received"),
    "404": _error("unknown model or version"),
    "413": _error("body or image too large"),
    "415": _error("unsupported Content-Type"),
    "503": _SHED,
}
_PAGE = {
    "200": {"description": "an HTML page", "content": {"text/html": {"schema": {"type": "string"}}}}
}

# (path, verb) -> the OpenAPI operation. Paths are written exactly as the routes are registered.
OPERATIONS: dict[tuple[str, str], dict[str, Any]] = {
    ("/v2/health/live", "GET"): _op(
        "Liveness", "v2 health", {"200": _json(_ref("Live"), "the process is up")}
    ),
    ("/v2/health/ready", "GET"): _op(
        "Readiness: a model is loaded and the server is not draining",
        "v2 health",
        {"200": _json(_ref("Ready"), "ready"), "503": _json(_ref("Ready"), "not ready")},
    ),
    ("/v2", "GET"): _op(
        "Server metadata", "v2 metadata", {"200": _json(_ref("ServerMetadata"), "server metadata")}
    ),
    ("/v2/models/{name}", "GET"): _op(
        "Model metadata: inputs, outputs, labels",
        "v2 metadata",
        {"200": _json(_ref("ModelMetadata"), "model metadata"), "404": _error("unknown model")},
        parameters=[_NAME],
    ),
    ("/v2/models/{name}/versions/{version}", "GET"): _op(
        "Metadata of one model version (the one served)",
        "v2 metadata",
        {
            "200": _json(_ref("ModelMetadata"), "model metadata"),
            "404": _error("unknown model or version"),
        },
        parameters=[_NAME, _VERSION],
    ),
    ("/v2/models/{name}/ready", "GET"): _op(
        "Model readiness",
        "v2 health",
        {"200": _json(_ref("ModelReady"), "ready"), "503": _json(_ref("ModelReady"), "not ready")},
        parameters=[_NAME],
    ),
    ("/v2/models/{name}/versions/{version}/ready", "GET"): _op(
        "Model version readiness",
        "v2 health",
        {"200": _json(_ref("ModelReady"), "ready"), "503": _json(_ref("ModelReady"), "not ready")},
        parameters=[_NAME, _VERSION],
    ),
    ("/v2/models/{name}/infer", "POST"): _op(
        "Inference (Open Inference Protocol v2; JSON or binary tensors)",
        "v2 inference",
        {"200": _INFER_OK, **_REFUSED},
        parameters=[_NAME, _HEADER_LENGTH],
        requestBody=_INFER_BODY,
    ),
    ("/v2/models/{name}/versions/{version}/infer", "POST"): _op(
        "Inference on one model version (the one served)",
        "v2 inference",
        {"200": _INFER_OK, **_REFUSED},
        parameters=[_NAME, _VERSION, _HEADER_LENGTH],
        requestBody=_INFER_BODY,
    ),
    ("/classify", "POST"): _op(
        "Classify one leaf photo",
        "images",
        {"200": _json(_ref("Classified"), "the top labels"), **_REFUSED},
        parameters=[_TOP_K],
        requestBody=_IMAGE_BODY,
    ),
    ("/feedback", "POST"): _op(
        "Report a wrong diagnosis: the photo is classified again and kept for review (needs "
        "--capture)",
        "images",
        {
            "200": _json(
                _ref("Classified"), "classified and kept; captured holds the capture's id"
            ),
            "429": _error("over capture_per_minute: not kept"),
            **_REFUSED,
            "404": _error("capture is off on this server"),
        },
        parameters=[
            _TOP_K,
            {
                "name": "label",
                "in": "query",
                "required": False,
                "schema": {"type": "string"},
                "description": "what the photo really shows (a class name), if known",
            },
        ],
        requestBody=_IMAGE_BODY,
    ),
    ("/metrics", "GET"): _op(
        "Prometheus metrics (text exposition format)",
        "operations",
        {
            "200": {
                "description": "metrics",
                "content": {"text/plain": {"schema": {"type": "string"}}},
            }
        },
    ),
    (OPENAPI_PATH, "GET"): _op(
        "This document", "operations", {"200": _json({"type": "object"}, "OpenAPI 3.1")}
    ),
    ("/", "GET"): _op("The diagnosis page", "pages", _PAGE),
    ("/ui/settings.json", "GET"): _op(
        "What the page needs to know: model, version, threshold, labels",
        "pages",
        {"200": _json(_ref("PageSettings"), "page settings"), "503": _SHED},
    ),
    ("/ui/{name}", "GET"): _op(
        "A static file of the pages (scripts, style, icon)",
        "pages",
        {
            "200": {"description": "the file"},
            "304": {"description": "unchanged (ETag)"},
            "404": _error("no such"),
        },
        parameters=[{"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}],
    ),
    ("/model", "GET"): _op("The model card page", "model card", _PAGE),
    ("/model/card.json", "GET"): _op(
        "The served version's model card: metrics, dataset, gate decision, figures",
        "model card",
        {"200": _json(_ref("ModelCard"), "the model card"), "503": _SHED},
    ),
    ("/model/{figure}", "GET"): _op(
        "A figure of the model card (PNG)",
        "model card",
        {
            "200": {
                "description": "the figure",
                "content": {formats.PNG.mime: {"schema": {"type": "string"}}},
            },
            "404": _error("the version published no such figure"),
        },
        parameters=[
            {"name": "figure", "in": "path", "required": True, "schema": {"type": "string"}}
        ],
    ),
    ("/review", "GET"): _op(
        "The review page (needs the review token)", "review", {**_PAGE, "401": _error("no token")}
    ),
    ("/review/items", "GET"): _op(
        "Captured photos waiting for review",
        "review",
        {"200": _json({"type": "object"}, "the inbox's items"), "401": _error("no or wrong token")},
    ),
    ("/review/items/{capture_id}/photo", "GET"): _op(
        "A captured photo",
        "review",
        {"200": {"description": "the photo as captured"}, "404": _error("no such capture")},
        parameters=[
            {"name": "capture_id", "in": "path", "required": True, "schema": {"type": "string"}}
        ],
    ),
    ("/review/items/{capture_id}/accept", "POST"): _op(
        "Move a captured photo into the training data under a label",
        "review",
        {"200": _json({"type": "object"}, "accepted"), "409": _error("already handled")},
        parameters=[
            {"name": "capture_id", "in": "path", "required": True, "schema": {"type": "string"}}
        ],
        requestBody={
            "required": True,
            "content": {
                _JSON: {
                    "schema": {
                        "type": "object",
                        "required": ["label"],
                        "properties": {
                            "label": {"type": "string"},
                            "new_class": {"type": "boolean"},
                        },
                    }
                }
            },
        },
    ),
    ("/review/items/{capture_id}/reject", "POST"): _op(
        "Discard a captured photo",
        "review",
        {"200": _json({"type": "object"}, "rejected"), "409": _error("already handled")},
        parameters=[
            {"name": "capture_id", "in": "path", "required": True, "schema": {"type": "string"}}
        ],
        requestBody={"required": True, "content": {_JSON: {"schema": {"type": "object"}}}},
    ),
}

_STR, _INT, _NUM, _BOOL = (
    {"type": "string"},
    {"type": "integer"},
    {"type": "number"},
    {"type": "boolean"},
)
_SHAPE = {"type": "array", "items": {"type": "integer"}}
_DATATYPE = {"type": "string", "enum": list(codecs.DATATYPES)}
_PARAMS = {
    "type": "object",
    "description": "v2 parameters (e.g. binary_data_size, binary_data_output)",
}
_TENSOR_META = {
    "type": "object",
    "required": ["name", "datatype", "shape"],
    "properties": {"name": _STR, "datatype": _DATATYPE, "shape": _SHAPE},
}
_LABEL = {
    "type": "object",
    "required": ["label", "display"],
    "properties": {"label": _STR, "display": _STR},
}
_MAYBE_NUM = {"type": ["number", "null"]}

SCHEMAS: dict[str, dict[str, Any]] = {
    "Error": {"type": "object", "required": ["error"], "properties": {"error": _STR}},
    "Live": {"type": "object", "required": ["live"], "properties": {"live": _BOOL}},
    "Ready": {"type": "object", "required": ["ready"], "properties": {"ready": _BOOL}},
    "ModelReady": {
        "type": "object",
        "required": ["name", "ready"],
        "properties": {"name": _STR, "ready": _BOOL},
    },
    "ServerMetadata": {
        "type": "object",
        "required": ["name", "version", "extensions"],
        "properties": {
            "name": _STR,
            "version": _STR,
            "extensions": {"type": "array", "items": _STR},
        },
    },
    "ModelMetadata": {
        "type": "object",
        "required": ["name", "versions", "platform", "inputs", "outputs"],
        "properties": {
            "name": _STR,
            "versions": {"type": "array", "items": _STR},
            "platform": _STR,
            "inputs": {"type": "array", "items": _TENSOR_META},
            "outputs": {"type": "array", "items": _TENSOR_META},
            "parameters": {"type": "object"},
        },
    },
    "InferRequest": {
        "type": "object",
        "required": ["inputs"],
        "properties": {
            "id": _STR,
            "parameters": _PARAMS,
            "inputs": {
                "type": "array",
                "minItems": 1,
                "items": {
                    "type": "object",
                    "required": ["name", "shape", "datatype"],
                    "properties": {
                        "name": _STR,
                        "shape": _SHAPE,
                        "datatype": _DATATYPE,
                        "parameters": _PARAMS,
                        "data": {
                            "type": "array",
                            "description": "values, flat or nested, row-major",
                        },
                    },
                },
            },
            "outputs": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["name"],
                    "properties": {"name": _STR, "parameters": _PARAMS},
                },
            },
        },
    },
    "InferResponse": {
        "type": "object",
        "required": ["model_name", "outputs"],
        "properties": {
            "model_name": _STR,
            "model_version": _STR,
            "id": _STR,
            "outputs": {
                "type": "array",
                "items": {
                    **_TENSOR_META,
                    "properties": {
                        **_TENSOR_META["properties"],
                        "parameters": _PARAMS,
                        "data": {
                            "type": "array",
                            "items": _MAYBE_NUM,
                            "description": "flat; null = not finite",
                        },
                    },
                },
            },
        },
    },
    "Classified": {
        "type": "object",
        "required": [
            "model",
            "version",
            "predictions",
            "confidence_threshold",
            "confident",
            "captured",
        ],
        "properties": {
            "model": _STR,
            "version": _STR,
            "predictions": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["label", "display", "probability"],
                    "properties": {"label": _STR, "display": _STR, "probability": _MAYBE_NUM},
                },
            },
            "confidence_threshold": _NUM,
            "confident": _BOOL,
            "captured": {
                "type": ["string", "null"],
                "description": "the capture's id when the photo was kept",
            },
        },
    },
    "PageSettings": {
        "type": "object",
        "required": ["model", "version", "confidence_threshold", "top_k", "capture", "labels"],
        "properties": {
            "model": _STR,
            "version": _STR,
            "confidence_threshold": _NUM,
            "top_k": _INT,
            "capture": _BOOL,
            "labels": {"type": "array", "items": _LABEL},
        },
    },
    "ModelCard": {
        "type": "object",
        # Anonymous: no data URI, code version or execution provider (leaf_serve.card, issue #20).
        "required": ["name", "version", "trained_at", "served_since", "classes", "metrics", "gate"],
        "properties": {
            "name": _STR,
            "version": _STR,
            "trained_at": _STR,
            "served_since": _STR,
            "classes": {"type": "array", "items": _LABEL},
            "dataset": {"type": "object"},
            "metrics": {
                "type": "object",
                "properties": {
                    "accuracy": _MAYBE_NUM,
                    "top3_accuracy": _MAYBE_NUM,
                    "macro_f1": _MAYBE_NUM,
                    "per_class": {"type": "array", "items": {"type": "object"}},
                },
            },
            "gate": {"type": "object"},
            "figures": {"type": "object", "additionalProperties": {"type": ["string", "null"]}},
            "missing": {"type": "array", "items": _STR},
            "problem": {"type": ["string", "null"]},
        },
    },
}


def document(server_version: str) -> dict[str, Any]:
    """The whole OpenAPI 3.1 document."""
    paths: dict[str, dict[str, Any]] = {}
    for (path, verb), operation in OPERATIONS.items():
        if operation.get("requestBody") is _IMAGE_BODY:
            operation = {**operation, "requestBody": _image_body()}
        paths.setdefault(path, {})[verb.lower()] = operation
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "leaf-serve",
            "version": server_version,
            "description": (
                "Leaf disease classifier: Open Inference Protocol v2 (REST; gRPC on its own port), "
                "an image endpoint, the pages, capture and review."
            ),
        },
        "paths": paths,
        "components": {"schemas": SCHEMAS},
    }


class OpenApiSection:
    """The ``/openapi.json`` route, built once (the document does not change while the server
    runs)."""

    def __init__(self, server_version: str):
        self._body = JSONResponse(document(server_version)).body

    def table(self) -> list[tuple[str, Any, str, str]]:
        return [(OPENAPI_PATH, self.serve, "GET", "openapi")]

    async def serve(self, request: Request) -> Response:
        return Response(self._body, media_type=_JSON, headers={"Cache-Control": "no-cache"})
