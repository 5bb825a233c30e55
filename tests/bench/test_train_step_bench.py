"""bench/train_step_bench.py, which the GPU check calls: one JSON object out, exit 3 without TensorFlow.

Run on CPU with tiny steps and a small image so the CLI cannot rot; the speed itself is the GPU
check's business, not a test's.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parents[2] / "bench" / "train_step_bench.py"
TINY = ["--batch-size", "4", "--steps", "2", "--warmup", "1", "--image-size", "32"]


def bench(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        check=False,
    )


def check_record(
    result: dict, augment: str, *, xla: bool, steps: int, batch: int, size: int
) -> None:
    """The JSON object the script prints, as the GPU check reads it."""
    assert result["augment"] == augment and result["xla"] is xla
    assert (result["steps"], result["batch_size"], result["image_size"]) == (steps, batch, size)
    assert result["device_type"] == "CPU" and result["device"]
    assert result["precision"] == "float32" and result["mixed_precision"] is False
    assert result["tf_version"].startswith("2.") and result["images_per_s"] > 0
    assert result["images_per_s"] == pytest.approx(batch * steps / result["seconds"], rel=0.01)


# Host and device augmentation without XLA run through the GPU check's own training section
# (tests/bench/test_gpu_check.py), with the arguments it passes; this is the XLA case it does not take on CPU.
@pytest.mark.slow  # ~15 s on 2 shared cores: TensorFlow start-up, VGG16 build, tracing, XLA
def test_prints_one_json_object_describing_the_timed_step():
    done = bench(
        "--augment", "device", "--jit-compile", "on", "--mixed-precision", "off", *TINY, "--json"
    )
    assert done.returncode == 0, done.stderr[-3000:]
    (line,) = done.stdout.strip().splitlines()  # nothing else on stdout: the GPU check parses it
    check_record(json.loads(line), "device", xla=True, steps=2, batch=4, size=32)


def test_without_tensorflow_it_says_so_and_exits_3(tmp_path):
    fake = tmp_path / "tensorflow"
    fake.mkdir()
    (fake / "__init__.py").write_text("raise ImportError('no TensorFlow on this machine')\n")
    env = os.environ | {"PYTHONPATH": f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    done = bench("--augment", "device", *TINY, "--json", env=env)
    assert done.returncode == 3
    assert "TensorFlow is not importable here (no TensorFlow on this machine)" in done.stderr
    assert done.stdout == ""


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--augment", "gpu"], "invalid choice: 'gpu'"),
        (["--augment", "host", "--steps", "0"], "--steps: expected >= 1"),
    ],
)
def test_bad_options_exit_2_naming_what_was_expected(args, message):
    done = bench(*args)
    assert done.returncode == 2 and message in done.stderr
