"""Facts about the two GPU images (`make images FLAVOUR=gpu`), checked inside them on a machine with no GPU.

The CPU images' facts (test_image_facts.py: uid 10001, read-only root, entrypoints, the lock), what the
training image leaves out (docs/images.md), and the CUDA build TensorFlow expects against the CUDA wheels
installed beside it: a mismatch there only shows on a GPU node, which these tests never have.
"""

from __future__ import annotations

import hashlib
import json
import re
import tomllib

import pytest
from containerkit import ROOT, podman, venv_facts
from containerkit import run_locked_down as run
from leaf_train.provenance import lock_pins
from scenario import Images

# The first test builds the images when their inputs changed: ~15 min from nothing on 2 shared cores.
pytestmark = [pytest.mark.container, pytest.mark.slow, pytest.mark.timeout(3600)]

IMAGES = {"job": ("leaf-train", "train"), "serve": ("leaf-serve", "serve-gpu")}  # entrypoint, lock


def version() -> str:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]


def pins(lock: str) -> dict[str, str]:
    return lock_pins((ROOT / "locks" / f"{lock}.txt").read_text())


@pytest.mark.parametrize("name", sorted(IMAGES))
def test_runs_as_uid_10001_on_a_read_only_root(gpu_images: Images, name: str):
    image = getattr(gpu_images, name)
    assert (
        json.loads(podman("image", "inspect", image).stdout)[0]["Config"]["User"] == "10001:10001"
    )
    out = run(
        image, "-c", "id -u; id -g; touch /opt/venv/probe 2>&1; echo rc=$?", entrypoint="sh"
    ).splitlines()
    assert out[:2] == ["10001", "10001"]
    assert "Read-only file system" in out[2] and out[3] == "rc=1"


@pytest.mark.parametrize("name", sorted(IMAGES))
def test_entrypoint_help_works(gpu_images: Images, name: str):
    out = run(getattr(gpu_images, name), "--help")  # the image's ENTRYPOINT is the program
    assert f"usage: {IMAGES[name][0]}" in out


@pytest.mark.parametrize("name", sorted(IMAGES))
def test_the_venv_is_its_lock_and_the_project(gpu_images: Images, name: str):
    """Exactly the lock (hash-checked at build time) plus leaf-train: so nothing left out crept back in."""
    lock = IMAGES[name][1]
    facts = venv_facts(getattr(gpu_images, name))
    assert (
        facts["lock_sha256"]
        == hashlib.sha256((ROOT / "locks" / f"{lock}.txt").read_bytes()).hexdigest()
    )
    expected = {f"{n}=={v}" for n, v in pins(lock).items()} | {f"leaf-train=={version()}"}
    assert set(facts["installed"]) == expected


def test_training_image_expects_the_cuda_it_carries(gpu_images: Images):
    """TensorFlow's build info names the CUDA and cuDNN it was built for; the image must carry wheels of
    the same major versions (CUDA minor-version compatibility covers a newer 12.x runtime), and the
    libraries TensorFlow opens on a GPU node by soname."""
    probe = (
        "import glob, json, os, tensorflow as tf; "
        "info = tf.sysconfig.get_build_info(); site = os.path.dirname(os.path.dirname(tf.__file__)); "
        "libs = sorted(os.path.basename(p) for p in glob.glob(site + '/nvidia/*/lib/lib*.so*')); "
        "print(json.dumps({'tf': tf.__version__, 'cuda': info.get('cuda_version'), "
        "'cudnn': info.get('cudnn_version'), 'is_cuda_build': info.get('is_cuda_build'), 'libs': libs, "
        "'headers': os.path.isdir(os.path.join(os.path.dirname(tf.__file__), 'include'))}))"
    )
    out = run(gpu_images.job, "-c", probe, entrypoint="python", timeout=300)
    facts = json.loads(out.strip().splitlines()[-1])
    locked = pins("train")
    assert facts["tf"] == locked["tensorflow"] and facts["is_cuda_build"] is True
    cuda_major, cuda_minor = (int(x) for x in facts["cuda"].split(".")[:2])
    runtime = [int(x) for x in locked["nvidia-cuda-runtime-cu12"].split(".")[:2]]
    assert runtime[0] == cuda_major and runtime[1] >= cuda_minor, (facts["cuda"], runtime)
    assert facts["cudnn"].split(".")[0] == locked["nvidia-cudnn-cu12"].split(".")[0]
    major = str(cuda_major)
    for soname in ("libcudart.so." + major, "libcublas.so." + major, "libcublasLt.so." + major, "libcufft.so.11",
                   "libcusolver.so.11", "libcusparse.so." + major, "libcudnn.so." + facts["cudnn"].split(".")[0],
                   "libnccl.so.2"):  # fmt: skip
        assert soname in facts["libs"], soname
    assert (
        facts["headers"] is False
    )  # tensorflow/include (0.4 GB, for compiling custom ops) is left out


def test_demo_is_left_out_of_the_gpu_training_image(gpu_images: Images):
    """The demo's embedded S3 (moto, ~40 packages) is not in the image: `leaf-train demo` says so and exits 2."""
    result = podman(
        "run",
        "--rm",
        "--read-only",
        "--tmpfs",
        "/tmp",
        gpu_images.job,
        "demo",
        check=False,
        timeout=300,
    )
    assert result.returncode == 2, result.stdout + result.stderr
    assert re.search(r"expected moto\[server\].*leaf-train\[demo\]", result.stderr)


def test_serving_image_has_the_cuda_provider_and_no_tensorflow(gpu_images: Images):
    probe = (
        "import importlib.util as u, onnxruntime as ort; "
        "print(u.find_spec('tensorflow') is not None, 'CUDAExecutionProvider' in ort.get_available_providers())"
    )
    assert run(gpu_images.serve, "-c", probe, entrypoint="python").strip() == "False True"
