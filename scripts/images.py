"""Build the two images (``make images``): leaf-train-job and leaf-serve, CPU or GPU flavour.

One Dockerfile per image (job/Dockerfile, serve/Dockerfile); this script only chooses their build
arguments and prepares what an offline build needs:

* **Engine**: ``scripts/get-podman.sh`` prints a *working* engine (``docker info`` or ``podman info``
  succeeds), installing podman with apt where neither works and this is a root shell.
* **Base image** (``PYTHON_IMAGE``): the official ``python:3.11-slim-bookworm`` when the engine has it or
  can pull it; otherwise (no registry reachable, as on the test machines) a Debian bookworm base built
  locally with mmdebstrap and imported. Its tarball is cached in ``.cache/images/`` under the sha256 of
  the recipe, so the ~1 minute mmdebstrap run happens once per machine.
* **Wheelhouse** (``WHEELHOUSE``): by default the flavour's lock (``locks/<lock>.txt``) is downloaded on
  the host with ``pip download --require-hashes`` into ``.cache/images/wheels/<lock>-<sha256 of the
  lock>/`` and the build installs from it with ``--no-index``: the path air-gapped users need, and the
  only one that works where builds cannot reach a package index. ``--online`` leaves WHEELHOUSE empty
  and pip uses the index from inside the build.
* **Up to date**: each image is labelled with the sha256 of what its build reads (Dockerfile, lock,
  copied sources, build arguments, base image id); a tag whose label matches is not rebuilt.
* **Disk** (docs/images.md): an image a build replaces is removed with the cached layers only it used,
  and a lock's earlier wheelhouses are removed when its content changes. The Dockerfiles install the
  venv in parts, one layer each, because committing a layer briefly takes four times its size.

Tags: ``<image>:<version>`` for the GPU flavour (the Dockerfiles' defaults), ``<image>:<version>-cpu``
for the CPU one; the version is pyproject.toml's. Usage::

    python scripts/images.py build [--flavour cpu|gpu|all] [--image NAME] [--online] [--no-cache]
    python scripts/images.py refs [--flavour cpu|gpu|all]      # the tags a build makes, one a line
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CACHE = (
    ROOT / ".cache" / "images"
)  # gitignored; .dockerignore lets only wheels/ into the build context
CONTAINERS_CONF = ROOT / "scripts" / "containers.conf"
OFFICIAL_BASE = "docker.io/library/python:3.11-slim-bookworm"
# The local stand-in for the official image: Debian bookworm's own Python 3.11 (/usr/bin/python3.11)
# with venv support and CA certificates. merged-usr through mmdebstrap's hook rather than the usrmerge
# package (which drags in perl, ~45 MB); documentation and locales left out, as in the official slim image.
BASE_RECIPE = (
    "--variant=minbase",
    "--include=python3,python3-venv,python-is-python3,ca-certificates",
    "--hook-dir=/usr/share/mmdebstrap/hooks/merged-usr",
    "--dpkgopt=path-exclude=/usr/share/doc/*",
    "--dpkgopt=path-include=/usr/share/doc/*/copyright",
    "--dpkgopt=path-exclude=/usr/share/man/*",
    "--dpkgopt=path-exclude=/usr/share/locale/*",
    "--dpkgopt=path-exclude=/usr/share/info/*",
    "bookworm",
)
DEBIAN_MIRROR = "http://deb.debian.org/debian"
# What the Dockerfiles COPY from the context besides locks/<lock>.txt (tests/k8s/test_images.py checks).
COPIED = ("pyproject.toml", "README.md", "job", "serve", "locks/install_part.py")
INPUTS_LABEL = "io.leaf-train.build-inputs-sha256"


@dataclass(frozen=True)
class Image:
    name: str
    dockerfile: str
    locks: dict[str, str]  # flavour -> lock profile (locks/<profile>.txt)


IMAGES = (
    Image("leaf-train-job", "job/Dockerfile", {"gpu": "train", "cpu": "train-cpu"}),
    Image("leaf-serve", "serve/Dockerfile", {"gpu": "serve-gpu", "cpu": "serve"}),
)
FLAVOURS = ("cpu", "gpu")


def log(msg: str) -> None:
    print(f"images: {msg}", file=sys.stderr, flush=True)


def version() -> str:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]


def tag(image: Image, flavour: str) -> str:
    return f"{image.name}:{version()}" + ("-cpu" if flavour == "cpu" else "")


def sha12(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:12]


class Engine:
    """docker or podman; podman always with the project's containers.conf."""

    def __init__(self, name: str):
        self.name = name
        self.env = {
            **os.environ,
            "CONTAINERS_CONF": os.environ.get("CONTAINERS_CONF", str(CONTAINERS_CONF)),
        }

    @classmethod
    def find(cls) -> Engine:
        """A working engine (``ENGINE=docker|podman`` to choose), podman installed where none works.

        Raises:
            SystemExit: none works and none can be installed (get-podman.sh's message says why).
        """
        env = {
            **os.environ,
            "CONTAINERS_CONF": os.environ.get("CONTAINERS_CONF", str(CONTAINERS_CONF)),
        }
        found = subprocess.run(
            [str(ROOT / "scripts" / "get-podman.sh")], env=env, capture_output=True, text=True
        )
        if found.returncode != 0:
            sys.stderr.write(found.stderr)
            raise SystemExit(found.returncode)
        return cls(found.stdout.strip())

    def __call__(self, *args: str, check: bool = True, **kw) -> subprocess.CompletedProcess:
        return subprocess.run([self.name, *args], check=check, env=self.env, **kw)

    def inspect(self, ref: str, template: str) -> str | None:
        """``image inspect --format template`` of ``ref``, or None when there is no such image."""
        result = self(
            "image",
            "inspect",
            "--format",
            template,
            ref,
            check=False,
            capture_output=True,
            text=True,
        )
        return result.stdout.strip() if result.returncode == 0 else None

    def base_image(self) -> str:
        """PYTHON_IMAGE for the builds: $PYTHON_IMAGE, else the official image if present or pullable, else a
        local Debian one."""
        if os.environ.get("PYTHON_IMAGE"):
            return os.environ["PYTHON_IMAGE"]
        if self.inspect(OFFICIAL_BASE, "{{.Id}}"):
            return OFFICIAL_BASE
        try:
            pulled = self(
                "pull", "--quiet", OFFICIAL_BASE, check=False, capture_output=True, timeout=120
            ).returncode
        except subprocess.TimeoutExpired:
            pulled = -1
        if pulled == 0:
            return OFFICIAL_BASE
        log(
            f"cannot pull {OFFICIAL_BASE} (no registry reachable?): using a Debian base built with mmdebstrap"
        )
        return self.local_base()

    def local_base(self) -> str:
        """Build (once, cached by recipe hash) and import the Debian bookworm Python 3.11 base."""
        key = sha12("\n".join([*BASE_RECIPE, DEBIAN_MIRROR]).encode())
        ref = f"localhost/leaf-train-python:3.11-bookworm-{key}"
        if self.inspect(ref, "{{.Id}}"):
            return ref
        tarball = CACHE / f"python-3.11-bookworm-{key}.tar"
        if not tarball.exists():
            if not shutil.which("mmdebstrap"):
                raise SystemExit(
                    f"images: expected a reachable registry for {OFFICIAL_BASE}, mmdebstrap to build a local base "
                    "(apt-get install mmdebstrap), or PYTHON_IMAGE=<an image with python3.11>; found none"
                )
            CACHE.mkdir(parents=True, exist_ok=True)
            partial = tarball.with_suffix(
                ".partial.tar"
            )  # mmdebstrap picks its output format by the suffix
            log(
                f"building the base with mmdebstrap into {tarball.relative_to(ROOT)} (about a minute)"
            )
            subprocess.run(
                ["mmdebstrap", "--quiet", *BASE_RECIPE, str(partial), DEBIAN_MIRROR], check=True
            )
            partial.rename(tarball)
        self("import", "--change", 'CMD ["python3"]', str(tarball), ref, capture_output=True)
        return ref

    def build(
        self, image: Image, flavour: str, python_image: str, offline: bool, no_cache: bool = False
    ) -> float:
        """Build one image unless its tag was built from the same inputs; returns the seconds it took."""
        lock = image.locks[flavour]
        wheels = wheelhouse(lock).relative_to(ROOT).as_posix() if offline else ""
        args = {
            "PYTHON_IMAGE": python_image,
            "LOCK": lock,
            "VERSION": version(),
            "WHEELHOUSE": wheels,
        }
        digest = inputs_digest(
            image, {**args, "PYTHON_IMAGE_ID": self.inspect(python_image, "{{.Id}}") or ""}
        )
        ref = tag(image, flavour)
        if (
            not no_cache
            and self.inspect(ref, f'{{{{index .Config.Labels "{INPUTS_LABEL}"}}}}') == digest
        ):
            log(f"{ref} is up to date (build inputs sha256 {digest[:12]})")
            return 0.0
        cmd = [
            "build",
            "--file",
            image.dockerfile,
            "--tag",
            ref,
            "--label",
            f"{INPUTS_LABEL}={digest}",
        ]
        cmd += ["--no-cache"] if no_cache else []
        for key, value in args.items():
            cmd += ["--build-arg", f"{key}={value}"]
        mode = "offline, from the wheelhouse" if offline else "online"
        log(f"building {ref} with {self.name} (lock {lock}, base {python_image}, {mode})")
        replaced = self.inspect(ref, "{{.Id}}")
        start = time.monotonic()
        self(
            *cmd,
            ".",
            cwd=ROOT,
            stdout=sys.stderr if os.environ.get("IMAGES_VERBOSE") else subprocess.DEVNULL,
        )
        took = time.monotonic() - start
        log(f"built {ref} in {took:.0f} s")
        if replaced and replaced != self.inspect(ref, "{{.Id}}"):
            self.remove_replaced(replaced)
        return took

    def remove_replaced(self, image_id: str) -> None:
        """Remove the image a build replaced, with its cached layers that nothing else uses (a GPU image's are
        6 GB). Left alone when something still uses it: another tag, a container, a child image."""
        removed = self("rmi", image_id, check=False, capture_output=True, text=True)
        if removed.returncode == 0:
            log(f"removed the replaced image {image_id[:12]} and its unused cached layers")
        else:
            log(f"kept the replaced image {image_id[:12]}: {removed.stderr.strip()}")


def inputs_digest(image: Image, args: dict[str, str]) -> str:
    """sha256 of what a build reads: the Dockerfile, the lock, what it COPYs (``COPIED``), its arguments."""
    h = hashlib.sha256(json.dumps(args, sort_keys=True).encode())
    paths = [ROOT / image.dockerfile, ROOT / "locks" / f"{args['LOCK']}.txt"]
    for name in COPIED:
        found = ROOT / name
        if found.is_dir():  # as the context has it: .dockerignore leaves out __pycache__ and *.pyc
            paths += sorted(
                f for f in found.rglob("*") if f.is_file() and "__pycache__" not in f.parts
            )
        else:
            paths.append(found)
    for path in paths:
        h.update(path.relative_to(ROOT).as_posix().encode() + b"\0" + path.read_bytes())
    return h.hexdigest()


def wheelhouse(lock: str) -> Path:
    """The lock's wheels, downloaded on the host once per lock content (``pip download`` checks every hash).

    The host must be CPython 3.11 on x86_64 Linux (glibc 2.28 or newer): pip picks the wheels this
    interpreter would install, and the images run CPython 3.11 on Debian bookworm (glibc 2.36).
    """
    text = (ROOT / "locks" / f"{lock}.txt").read_bytes()
    folder = CACHE / "wheels" / f"{lock}-{sha12(text)}"
    if (folder / ".complete").exists():
        return folder
    here = f"{platform.python_implementation()} {sys.version_info.major}.{sys.version_info.minor} {platform.machine()}"
    if here != "CPython 3.11 x86_64":
        raise SystemExit(
            f"images: the wheelhouse needs a CPython 3.11 x86_64 interpreter; received {here}"
        )
    folder.parent.mkdir(parents=True, exist_ok=True)
    log(f"downloading locks/{lock}.txt into {folder.relative_to(ROOT)}")
    partial = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{lock}-"))
    try:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
             "--require-hashes", "-r", str(ROOT / "locks" / f"{lock}.txt"), "--dest", str(partial)],
            check=True,
        )  # fmt: skip
        (partial / ".complete").touch()
        shutil.rmtree(folder, ignore_errors=True)
        partial.rename(folder)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    # A lock's earlier wheelhouses (its content before the last `make lock`): up to 3.3 GB each, never read again.
    for old in folder.parent.iterdir():
        if old != folder and re.fullmatch(rf"{re.escape(lock)}-[0-9a-f]{{12}}", old.name):
            log(f"removing the wheelhouse of an earlier locks/{lock}.txt: {old.relative_to(ROOT)}")
            shutil.rmtree(old)
    return folder


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("command", choices=["build", "refs"])
    parser.add_argument("--flavour", choices=[*FLAVOURS, "all"], default="all")
    parser.add_argument(
        "--image",
        choices=[i.name for i in IMAGES],
        action="append",
        help="only this one (repeatable)",
    )
    parser.add_argument(
        "--online", action="store_true", help="install from the package index inside the build"
    )
    parser.add_argument(
        "--no-cache", action="store_true", help="rebuild every layer (for timing a cold build)"
    )
    args = parser.parse_args(argv)
    flavours = FLAVOURS if args.flavour == "all" else (args.flavour,)
    images = [i for i in IMAGES if not args.image or i.name in args.image]
    refs = [tag(i, f) for f in flavours for i in images]
    if args.command == "build":
        engine = Engine.find()
        python_image = engine.base_image()
        for flavour in flavours:
            for image in images:
                engine.build(
                    image, flavour, python_image, offline=not args.online, no_cache=args.no_cache
                )
    print("\n".join(refs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
