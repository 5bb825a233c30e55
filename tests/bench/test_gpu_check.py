"""bench/gpu_check.sh --providers cpu: the GPU check's dry run in the suite, so the script cannot rot.

The whole script runs once (module fixture) on the tiny model with one-second points: every section, the
JSON on stdout and in $OUT, the figures and the ratios recomputed from their parts. No GPU here, so a
stand-in ``nvidia-smi`` on PATH answers the two queries the check makes: what the test proves about it
is that utilisation is sampled during every point and reported, not any GPU figure. The dry run leaves
the training section out (two TensorFlow processes, half its time); the section runs the real
bench/train_step_bench.py in a test of its own, marked slow.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from _gpu_load import choose_processes

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "bench" / "gpu_check.sh"
SMALL = ["--seconds", "1", "--runs", "3", "--max-concurrency", "4", "--training", "off"]
STAND_IN_UTIL = 37.0
STAND_IN_SMI = f"""#!/bin/sh
case "$*" in
  *name,driver_version*) echo "Stand-in GPU, 0.0, 1024" ;;
  *utilization.gpu*) echo "{STAND_IN_UTIL:g}, 512" ;;
  *) exit 9 ;;
esac
"""


# The whole check, server under load included, on the CPU: ~100 s on 2 cores.
pytestmark = pytest.mark.slow


def run_script(args: list[str], tmp: Path, *, smi: bool, **env: str) -> subprocess.CompletedProcess:
    path = os.environ["PATH"]
    if smi:
        (tmp / "bin").mkdir(exist_ok=True)
        (tmp / "bin" / "nvidia-smi").write_text(STAND_IN_SMI)
        (tmp / "bin" / "nvidia-smi").chmod(0o755)
        path = f"{tmp / 'bin'}:{path}"
    elif shutil.which("nvidia-smi"):
        pytest.skip("a real nvidia-smi is on PATH: this case needs a machine without one")
    full_env = {
        **os.environ,
        "PATH": path,
        "PYTHON": sys.executable,
        "GPU_CHECK_HOME": str(tmp / "home"),
        **env,
    }
    return subprocess.run(
        ["bash", str(SCRIPT), *args],
        capture_output=True,
        text=True,
        env=full_env,
        timeout=300,
        cwd=tmp,
    )


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    tmp = tmp_path_factory.mktemp("gpu-check")
    t = time.monotonic()
    proc = run_script(
        ["--providers", "cpu", "--model", "tiny", *SMALL], tmp, smi=True, OUT=str(tmp / "out")
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    wall = time.monotonic() - t
    return SimpleNamespace(report=json.loads(proc.stdout), out=tmp / "out", wall=wall)


def test_one_json_document_with_every_section(dry_run: SimpleNamespace) -> None:
    r = dry_run.report
    assert (r["status"], r["exit_code"], r["dry_run"], r["providers"]) == ("ok", 0, True, "cpu")
    for section in (
        "machine",
        "setup",
        "model",
        "in_process",
        "serving",
        "training",
        "tensorrt",
        "goals",
    ):
        assert section in r, section
    assert (
        json.loads((dry_run.out / "gpu_check.json").read_text()) == r
    )  # $OUT holds the same document
    assert "| in_process (CPUExecutionProvider)" in (dry_run.out / "gpu_check.md").read_text()
    assert (
        "gpu_check: serving over rest" in (dry_run.out / "gpu_check.log").read_text()
    )  # stderr kept too
    assert r["setup"]["packages"] == {"missing": {}, "recommended_missing": []}
    assert r["tensorrt"] == {"skipped": "--providers cpu"}
    assert 0 < r["wall_s"] <= dry_run.wall + 0.1 < r["budget_s"]


def test_in_process_figures_at_every_batch(dry_run: SimpleNamespace) -> None:
    in_proc = dry_run.report["in_process"]
    assert in_proc["provider"] == "CPUExecutionProvider"
    assert in_proc["profile"]["share_on_provider"] == 1.0
    assert in_proc["profile"]["heavy_ops_not_on_provider"] == []
    assert list(in_proc["batches"]) == ["1", "8", "32", "64"]
    for figures in in_proc["batches"].values():
        assert figures["images_per_s"] > 0 and figures["runs"] >= 3
        assert 0 < figures["p50_ms"] <= figures["p99_ms"]


@pytest.mark.parametrize("kind", ["rest", "grpc"])
def test_serving_ramp_and_ratio_from_their_parts(dry_run: SimpleNamespace, kind: str) -> None:
    r = dry_run.report
    serving, section = r["serving"], r["serving"][kind]
    assert serving["processes"] == choose_processes(r["machine"]["cpus"])  # 1 on 2 cores
    assert serving["max_batch_size"] == 8
    levels = [p["concurrency"] for p in section["points"]]
    assert levels == [1, 2, 4][: len(levels)] and len(levels) >= 2
    for p in section["points"]:
        assert p["req_per_s"] > 0 and p["requests"] > 0 and p["failed"] == 0
    best = max(section["points"], key=lambda p: p["req_per_s"])
    assert section["saturation"] == {
        "concurrency": best["concurrency"],
        "req_per_s": best["req_per_s"],
    }
    assert section["stopped"]
    in_batch = r["in_process"]["batches"]["8"]["images_per_s"]
    assert section["in_process_images_per_s"] == in_batch
    assert section["ratio_to_in_process"] == round(best["req_per_s"] / in_batch, 3) > 0
    native = {"rest": "wrk", "grpc": "h2load"}[kind]
    expected = native if shutil.which(native) else "python"
    assert serving["loadgen"][kind].split(" ")[0] == expected
    if kind == "rest":
        assert r["goals"]["serving_http_over_in_process"]["ratio"] == section["ratio_to_in_process"]
        assert r["goals"]["serving_http_over_in_process"]["meaningful"] is False


def test_gpu_utilisation_sampled_during_every_point(dry_run: SimpleNamespace) -> None:
    r = dry_run.report
    assert r["machine"]["gpu"]["name"] == "Stand-in GPU"
    points = [p for kind in ("rest", "grpc") for p in r["serving"][kind]["points"]]
    points += list(r["in_process"]["batches"].values())
    for p in points:
        assert p["gpu_util"]["samples"] >= 1
        assert p["gpu_util"]["mean_pct"] == p["gpu_util"]["max_pct"] == STAND_IN_UTIL


def test_training_off_is_reported_as_asked(dry_run: SimpleNamespace) -> None:
    assert dry_run.report["training"] == {"skipped": "asked: --training off"}


@pytest.mark.slow  # two TensorFlow processes, each building VGG16 and timing a step
def test_training_section_runs_the_real_trainer() -> None:
    """The real bench/train_step_bench.py, as the check calls it: a changed CLI shows as an "error"."""
    import gpu_check
    from test_train_step_bench import check_record

    args = gpu_check.parse_args(
        ["--train-steps", "1", "--train-batch-size", "2", "--train-image-size", "32",
         "--train-timeout", "300"]
    )  # fmt: skip
    training = gpu_check.training(args, gpu_check.Budget(600, time.time()))
    assert training["script"] == "bench/train_step_bench.py", training
    for augment in ("device", "host"):  # XLA and mixed precision stay off on a CPU (auto)
        check_record(training[augment], augment, xla=False, steps=1, batch=2, size=32)
    assert training["device_over_host"] > 0


@pytest.mark.parametrize(
    ("args", "smi", "code", "failure"),
    [
        (["--providers", "cuda"], False, 5, "no_gpu"),
        (["--providers", "cpu", "--max-concurrency", "0"], False, 2, "bad_options"),
        (["--no-such-option"], False, 2, "bad_options"),
        (["--providers", "cpu", "--train-image-size", "16"], False, 2, "bad_options"),
        (["--wheelhouse", "empty", "--providers", "cpu"], False, 6, "wheelhouse_incomplete"),
    ],
)
def test_each_failure_class_has_its_exit_code_and_one_json(
    tmp_path: Path, args: list[str], smi: bool, code: int, failure: str
) -> None:
    (tmp_path / "empty").mkdir()
    proc = run_script(args, tmp_path, smi=smi, OUT=str(tmp_path / "out"))
    report = json.loads(proc.stdout)
    assert (proc.returncode, report["exit_code"], report["failure"]) == (code, code, failure), (
        proc.stderr[-2000:]
    )
    assert report["status"] == "failed" and report["error"]


def test_without_cuda_provider_exit_3(tmp_path: Path) -> None:
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("this onnxruntime has the CUDA provider")
    proc = run_script(["--providers", "cuda"], tmp_path, smi=True)
    report = json.loads(proc.stdout)
    assert (proc.returncode, report["failure"]) == (3, "provider_missing")
    assert "CUDAExecutionProvider" in report["error"] and "CPUExecutionProvider" in report["error"]


def test_missing_packages_are_named(tmp_path: Path) -> None:
    """A Python without the server's packages (a bare venv): exit 4 naming each one."""
    subprocess.run(
        [sys.executable, "-m", "venv", "--without-pip", str(tmp_path / "bare")], check=True
    )
    proc = run_script(
        ["--providers", "cpu"],
        tmp_path,
        smi=False,
        PYTHON=str(tmp_path / "bare" / "bin" / "python"),
    )
    report = json.loads(proc.stdout)
    assert (proc.returncode, report["failure"]) == (4, "missing_packages")
    for name in ("numpy", "onnxruntime-gpu", "starlette", "uvicorn", "grpcio", "protobuf"):
        assert name in report["error"]


# The training section calls bench/train_step_bench.py by its documented contract (--augment host|device
# --batch-size N --steps N --image-size N --json; one JSON object on stdout; exit 3 when TensorFlow is not
# importable).
# Stand-ins that keep that contract check the calling side whatever the real script's state here.
STAND_IN_TRAINER = """import argparse, json, sys
p = argparse.ArgumentParser()
p.add_argument("--augment", choices=["host", "device"], required=True)
p.add_argument("--batch-size", type=int, required=True)
p.add_argument("--steps", type=int, required=True)
p.add_argument("--image-size", type=int, required=True)
p.add_argument("--json", action="store_true", required=True)
a = p.parse_args()
BEHAVIOUR
"""


@pytest.mark.parametrize(
    ("behaviour", "expected"),
    [
        (
            'print("TensorFlow is not importable", file=sys.stderr); sys.exit(3)',
            {
                "skipped": "TensorFlow is not importable here (trainer.py exited 3: TensorFlow is not importable)"
            },
        ),
        (
            'print("log line"); print(json.dumps({"augment": a.augment, "images_per_s": '
            '{"device": 300.0, "host": 120.0}[a.augment] * a.batch_size / 2}))',
            {
                "script": "SCRIPT",
                "device": {"augment": "device", "images_per_s": 300.0},
                "host": {"augment": "host", "images_per_s": 120.0},
                "device_over_host": 2.5,
            },
        ),
        (
            'print("device OOM", file=sys.stderr) if a.augment == "device" else None\n'
            'sys.exit(1) if a.augment == "device" else print(json.dumps({"images_per_s": 10.0}))',
            {
                "script": "SCRIPT",
                "device": {"error": "exit 1: device OOM"},
                "host": {"images_per_s": 10.0},
            },
        ),
    ],
    ids=["no-tensorflow", "figures", "one-mode-fails"],
)
def test_training_section_keeps_the_trainers_contract(
    tmp_path: Path, behaviour: str, expected: dict
) -> None:
    import gpu_check

    trainer = tmp_path / "trainer.py"
    trainer.write_text(STAND_IN_TRAINER.replace("BEHAVIOUR", behaviour))
    args = gpu_check.parse_args(["--train-script", str(trainer), "--train-batch-size", "2"])
    result = gpu_check.training(args, gpu_check.Budget(480, time.time()))
    shown = os.path.relpath(
        trainer, gpu_check.HERE.parent
    )  # the report names the script from the tree's root
    assert result == json.loads(json.dumps(expected).replace("SCRIPT", shown))


def test_training_section_without_the_script(tmp_path: Path) -> None:
    import gpu_check

    args = gpu_check.parse_args(["--train-script", str(tmp_path / "absent.py")])
    assert gpu_check.training(args, gpu_check.Budget(480, time.time()))["skipped"].endswith(
        "is not in this tree"
    )
