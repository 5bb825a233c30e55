"""bench/pipeline_bench.py's decode, S3 and peak-memory parts, run tiny so the script cannot rot.

They call ``decode_all`` the way the job does; when its signature changed they broke and nothing
said so. The overhead and augmentation parts train VGG16 (tens of seconds) and are not run here.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]
SCRIPT = ROOT / "bench" / "pipeline_bench.py"


@pytest.mark.slow  # a benchmark end to end, though a tiny one (about 3 s)
def test_decode_s3_and_memory_parts_report_every_image_decoded(tmp_path):
    out = tmp_path / "pipeline.json"
    tiny = ["--leaf", "8", "--phone", "1", "--s3", "8", "--rss", "8,16", "--repeats", "1"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "job"), str(ROOT / "serve")])}
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--parts", "decode,s3,rss", *tiny, "--out", str(out)],
        capture_output=True, text=True, timeout=300, env=env, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["decode"]["leaf_256"]["images"] == 8
    assert result["decode"]["phone_2000x1500"]["images"] == 1
    assert all(part["images_per_s"] > 0 for part in result["decode"].values() if "images" in part)
    s3 = result["s3"]["leaf_256"]
    assert s3["images"] == 8 and s3["speedup"] > 0
    assert [(r["n"], r["ok"]) for r in result["rss"]] == [(8, 8), (16, 16)]
