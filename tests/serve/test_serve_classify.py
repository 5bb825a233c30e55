"""The image endpoint with real JPEG/PNG bytes: raw and multipart bodies, colour modes, bad images.

Each case is about what the handler answers, so the app is called in-process (``client``).
"""

from __future__ import annotations

import io

import pytest
from PIL import Image
from servekit import MODEL_NAME, V1, AppClient, encode_image

RED, GREEN, BLUE = (230, 20, 20), (20, 230, 20), (20, 20, 230)


@pytest.mark.parametrize(
    ("rgb", "fmt", "mode", "label"),
    [
        (RED, "JPEG", "RGB", "healthy"),
        (GREEN, "PNG", "RGB", "rust"),
        (BLUE, "PNG", "P", "blight"),  # palette
        (BLUE + (255,), "PNG", "RGBA", "blight"),  # opaque alpha: keeps its colour
        (BLUE + (0,), "PNG", "RGBA", None),  # fully transparent: flattened onto white (next test)
        ((200, 200, 200), "JPEG", "L", None),  # grayscale: converted, any label
    ],
)
def test_raw_body_gives_top_k_with_version(
    client: AppClient, rgb: tuple, fmt: str, mode: str, label: str
) -> None:
    content_type = "image/jpeg" if fmt == "JPEG" else "image/png"
    r = client.post(
        "/classify", content=encode_image(rgb, fmt, mode), headers={"Content-Type": content_type}
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["model"], body["version"]) == (MODEL_NAME, "v1")
    predictions = body["predictions"]
    assert [p["label"] for p in predictions] != [] and {p["label"] for p in predictions} == set(
        V1["labels"]
    )
    probs = [p["probability"] for p in predictions]
    assert probs == sorted(probs, reverse=True) and abs(sum(probs) - 1) < 1e-5
    if label is not None:
        assert predictions[0]["label"] == label


def test_transparent_pixels_become_white(client: AppClient) -> None:
    transparent = client.post("/classify", content=encode_image(BLUE + (0,), "PNG", "RGBA"))
    white = client.post("/classify", content=encode_image((255, 255, 255), "PNG"))
    assert transparent.json()["predictions"] == white.json()["predictions"]


@pytest.mark.parametrize("field", ["file", "image"])
def test_multipart_form(client: AppClient, field: str) -> None:
    files = {field: ("leaf.jpg", encode_image(GREEN, "JPEG"), "image/jpeg")}
    r = client.post("/classify", files=files, data={"note": "from a browser"})
    assert r.status_code == 200, r.text
    assert r.json()["predictions"][0]["label"] == "rust"


@pytest.mark.parametrize(
    ("query", "count"), [("?top_k=1", 1), ("?top_k=2", 2), ("?top_k=50", 3), ("", 3)]
)
def test_top_k_query(client: AppClient, query: str, count: int) -> None:
    r = client.post("/classify" + query, content=encode_image(RED, "PNG"))
    assert len(r.json()["predictions"]) == count


def _bomb(mode: str = "L", size: tuple[int, int] = (9000, 8000)) -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size).save(buf, format="PNG")  # 72 MP of zeros: a few KB compressed
    return buf.getvalue()


@pytest.mark.parametrize(
    ("content", "headers", "query", "status", "fragment"),
    [
        (b"", {"Content-Type": "image/png"}, "", 400, "received an empty body"),
        (
            b"definitely not an image",
            {"Content-Type": "image/jpeg"},
            "",
            400,
            "expected a readable JPEG or PNG",
        ),
        (encode_image(RED, "PNG")[:60], {"Content-Type": "image/png"}, "", 400, "could not decode"),
        (encode_image(RED, "GIF"), {"Content-Type": "image/png"}, "", 400, "received GIF data"),
        (_bomb(), {"Content-Type": "image/png"}, "", 400, "expected at most 64000000 pixels"),
        # 20 MP of RGBA is under the pixel cap, but decoding it needs 240 MB: more than the whole decode budget.
        (
            _bomb("RGBA", (5000, 4000)),
            {"Content-Type": "image/png"},
            "",
            413,
            "the server allows 201326592",
        ),
        (b"{}", {"Content-Type": "application/json"}, "", 415, "received application/json"),
        (b"a=b", {"Content-Type": "text/plain"}, "", 415, "Content-Type: expected image/jpeg"),
        (
            b"--x--",
            {"Content-Type": "multipart/form-data; boundary=x"},
            "",
            400,
            "expected a file field",
        ),
        (
            b"x" * (300 * 1024),
            {"Content-Type": "image/png"},
            "",
            413,
            "expected at most 262144 bytes",
        ),
        (
            encode_image(RED, "PNG"),
            {"Content-Type": "image/png"},
            "?top_k=0",
            400,
            "top_k: expected a positive",
        ),
        (
            encode_image(RED, "PNG"),
            {"Content-Type": "image/png"},
            "?top_k=x",
            400,
            "top_k: expected a positive",
        ),
    ],
)
def test_bad_images_are_4xx(
    client: AppClient, content: bytes, headers: dict, query: str, status: int, fragment: str
) -> None:
    r = client.post("/classify" + query, content=content, headers=headers)
    assert r.status_code == status, r.text
    assert fragment in r.json()["error"]
