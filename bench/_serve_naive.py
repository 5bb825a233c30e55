"""The baseline: a naive server doing one ``session.run`` per request, no batching (bench only).

Same binary v2 request format and the same ORT settings as leaf-serve, so the difference
measured is the serving design, not the codec.
"""

from __future__ import annotations

import json
import sys

import numpy as np
import onnxruntime as ort
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route


def main(model_path: str, port: int, threads: int) -> None:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(
        model_path, sess_options=options, providers=["CPUExecutionProvider"]
    )

    async def infer(request: Request) -> Response:
        body = await request.body()
        n = int(request.headers["Inference-Header-Content-Length"])
        shape = json.loads(body[:n])["inputs"][0]["shape"]
        batch = np.frombuffer(body[n:], dtype="<f4").reshape(shape)
        probs = session.run(None, {"image": batch})[0]  # on the event loop: one request at a time
        return Response(probs.tobytes(), media_type="application/octet-stream")

    async def ready(request: Request) -> Response:
        return Response(b'{"ready": true}')

    app = Starlette(
        routes=[
            Route("/v2/models/{name}/infer", infer, methods=["POST"]),
            Route("/v2/health/ready", ready),
        ]
    )
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))
