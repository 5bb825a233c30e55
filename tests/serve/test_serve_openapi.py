"""``/openapi.json``: a valid OpenAPI 3.1 document that describes exactly the routes the server registers.

Validated with openapi-spec-validator (the document) and openapi-schema-validator (real responses
against the document's schemas), with the app called in-process (``client``).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from leaf_serve.codecs import HEADER_LENGTH
from openapi_schema_validator import OAS31Validator
from openapi_spec_validator import OpenAPIV31SpecValidator
from servekit import colour_image, png

GREEN = colour_image((20, 230, 20))
JSON_INFER = {
    "inputs": [
        {
            "name": "image",
            "shape": [1, 32, 32, 3],
            "datatype": "FP32",
            "data": GREEN.ravel().tolist(),
        }
    ]
}


@pytest.fixture(scope="module")
def doc(client) -> dict:
    response = client.get("/openapi.json")
    assert response.status_code == 200 and response.headers["content-type"] == "application/json"
    return response.json()


def test_the_document_is_valid_openapi_3_1(doc):
    OpenAPIV31SpecValidator(doc).validate()  # raises on the first error
    assert doc["openapi"] == "3.1.0" and doc["info"]["title"] == "leaf-serve"


def test_a_broken_document_is_refused(doc):
    """The validator is really checking: a response without a description is not OpenAPI."""
    broken = json.loads(json.dumps(doc))
    del broken["paths"]["/classify"]["post"]["responses"]["200"]["description"]
    assert list(OpenAPIV31SpecValidator(broken).iter_errors())


def test_every_registered_route_is_described_and_every_description_is_a_route(client, doc):
    registered = {(r.path, m) for r in client.app.routes for m in r.methods if m != "HEAD"}
    described = {(path, verb.upper()) for path, ops in doc["paths"].items() for verb in ops}
    assert registered - described == set(), "routes without a description in leaf_serve/openapi.py"
    assert described - registered == set(), "descriptions of routes the server does not have"
    expected = {
        "/v2/health/ready",
        "/v2",
        "/v2/models/{name}/infer",
        "/classify",
        "/feedback",
        "/model/card.json",
    }
    assert expected <= {path for path, _ in registered}


def schema_of(
    doc: dict, path: str, verb: str, status: int, media: str = "application/json"
) -> dict:
    """The response schema, made standalone ($refs resolve against the document's components)."""
    response = doc["paths"][path][verb]["responses"][str(status)]
    return {**response["content"][media]["schema"], "components": doc["components"]}


CASES = [
    ("/v2/health/live", "get", {}, "/v2/health/live", 200),
    ("/v2/health/ready", "get", {}, "/v2/health/ready", 200),
    ("/v2", "get", {}, "/v2", 200),
    ("/v2/models/leaf", "get", {}, "/v2/models/{name}", 200),
    ("/v2/models/leaf/versions/v1", "get", {}, "/v2/models/{name}/versions/{version}", 200),
    ("/v2/models/leaf/versions/v9", "get", {}, "/v2/models/{name}/versions/{version}", 404),
    ("/v2/models/leaf/ready", "get", {}, "/v2/models/{name}/ready", 200),
    ("/v2/models/leaf/infer", "post", {"json": JSON_INFER}, "/v2/models/{name}/infer", 200),
    ("/v2/models/leaf/infer", "post", {"content": b"{"}, "/v2/models/{name}/infer", 400),
    (
        "/classify",
        "post",
        {"content": png((20, 230, 20)), "headers": {"content-type": "image/png"}},
        "/classify",
        200,
    ),
    ("/feedback", "post", {"content": png((20, 230, 20))}, "/feedback", 404),  # capture is off here
    ("/ui/settings.json", "get", {}, "/ui/settings.json", 200),
    ("/model/card.json", "get", {}, "/model/card.json", 200),
]


@pytest.mark.parametrize(("url", "verb", "kwargs", "path", "status"), CASES)
def test_real_responses_match_the_documented_schema(client, doc, url, verb, kwargs, path, status):
    response = client.request(verb.upper(), url, **kwargs)
    assert response.status_code == status, response.text
    OAS31Validator(schema_of(doc, path, verb, status)).validate(response.json())


def test_binary_infer_response_header_matches_the_documented_schema(client, doc):
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "image",
                    "shape": [1, 32, 32, 3],
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": 12288},
                }
            ],
            "outputs": [{"name": "probabilities", "parameters": {"binary_data": True}}],
        }
    ).encode()
    body = header + GREEN.astype("<f4").tobytes()
    response = client.post(
        "/v2/models/leaf/infer",
        content=body,
        headers={"content-type": "application/octet-stream", HEADER_LENGTH: str(len(header))},
    )
    assert response.status_code == 200, response.text
    assert (
        "application/octet-stream"
        in doc["paths"]["/v2/models/{name}/infer"]["post"]["requestBody"]["content"]
    )
    split = int(response.headers[HEADER_LENGTH])
    OAS31Validator(schema_of(doc, "/v2/models/{name}/infer", "post", 200)).validate(
        json.loads(response.content[:split])
    )
    assert np.frombuffer(response.content[split:], "<f4").shape == (3,)


def test_the_pages_link_to_the_document(client):
    for page in ("/", "/model"):
        assert 'href="/openapi.json"' in client.get(page).text, page
