"""Docs that cannot rot: every command in README.md and docs/*.md runs, or is checked, here.

The rules (docs/development.md, "The docs test", says the same for people):

* Shell blocks are fenced blocks marked ``bash``, ``sh`` or ``shell``. Lines ending in ``\\`` continue;
  ``#`` starts a comment; ``&&``, ``||``, ``;`` and ``|`` separate commands; ``for``/``do``/``done`` and
  leading ``VAR=value`` assignments are looked through.
* ``helm install|upgrade``: rendered with ``helm template`` and checked with ``helm lint --strict``, with
  the same values and flags. A fresh install (``install``, or ``upgrade`` without ``--reuse-values``) must
  set everything the chart needs itself; an upgrade with ``--reuse-values`` stands for a release that
  already has its images and buckets, so ``REUSED`` (placeholders for those only) is added first.
  ``helm template``/``lint`` run as written; other helm commands are not run.
* ``leaf-train``/``leaf-serve``: parsed by the program's own argparse parser, built without running
  anything; an unknown command or flag fails, ``--help`` passes. ``leaf-train train`` and ``leaf-serve``
  lines are then resolved by their config classes (types, choices, bounds), as the programs start.
* ``make``: every target named exists in the Makefile. ``pip install '.[X]'``: the extra exists.
* ``python``/``bash`` and commands that are repository paths: the script exists.
* Shell variables in a checked command must be in ``PLACEHOLDERS`` (an image registry and two buckets).
* Everywhere on a page: a word that starts with a top-level file or folder of the repository names a path
  that exists (``*`` globs must match), relative links and their ``#anchors`` resolve, a ``leaf_serve_*``
  metric is a series the server exposes, a capture id is one the inbox accepts.

Each failure names the file and line; one test per page and rule lists all of that page's failures.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import io
import re
import shlex
import subprocess
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from leaf_common.config import add_arguments, resolve
from leaf_common.errors import LeafError
from leaf_common.inbox import InvalidName, check_capture_id
from leaf_serve.metrics import ServeMetrics, WorkerRestarts
from leaf_serve.settings import ENV_PREFIX as SERVE_PREFIX
from leaf_serve.settings import ServeConfig
from leaf_train.cli import build_parser as train_parser
from leaf_train.commands.train import _components as train_components
from leaf_train.config import ENV_PREFIX as TRAIN_PREFIX

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
HELM = ROOT / ".tools" / "bin" / "helm"
# What a reader replaces with their own: an image registry and the two buckets (README, "On a cluster").
PLACEHOLDERS = {
    "REGISTRY": "registry.example.com/leaf",
    "DATA": "s3://leaf-data/leaves",
    "MODELS": "s3://leaf-models/registry",
}
# What an installed release already has, for `helm upgrade --reuse-values` blocks: images and buckets only.
REUSED = (
    *(
        "--set",
        "training.image.registry=registry.example.com",
        "--set",
        "training.image.repository=leaf/leaf-train-job",
    ),
    *(
        "--set",
        "serving.image.registry=registry.example.com",
        "--set",
        "serving.image.repository=leaf/leaf-serve",
    ),
    *("--set", f"s3.data={PLACEHOLDERS['DATA']}", "--set", f"s3.output={PLACEHOLDERS['MODELS']}"),
)
HELM_VALUE_FLAGS = {
    "-n",
    "--namespace",
    "-f",
    "--values",
    "--set",
    "--set-string",
    "--set-json",
    "--set-file",
}
HELM_VALUE_FLAGS |= {"--version", "--kube-version"}
HELM_DROPPED_VALUE_FLAGS = {
    "--timeout",
    "--history-max",
    "--description",
}  # upgrade-only, nothing to render
HELM_DROPPED_SWITCHES = {
    "--install",
    "--create-namespace",
    "--wait",
    "--wait-for-jobs",
    "--atomic",
    "--reuse-values",
}
HELM_DROPPED_SWITCHES |= {"--reset-values", "--cleanup-on-fail", "--force", "--dry-run", "--debug"}
SHELLS = {"bash", "sh", "shell"}
KEYWORDS = {"do", "then", "else", "done", "fi", "{", "}"}
PYTHONS = {"python", "python3", "python3.11", ".venv/bin/python", "bash", "sh"}


@dataclass(frozen=True)
class Command:
    page: str  # relative to the repository root
    line: int
    argv: tuple[str, ...]

    def __str__(self) -> str:
        return f"{self.page}:{self.line}: {shlex.join(self.argv)}"


def relative(path: Path) -> str:
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else path.name


def shell_blocks(text: str) -> Iterator[tuple[int, list[str]]]:
    """(line number of the block's first line, its lines without the common indent)."""
    lines, i = text.splitlines(), 0
    while i < len(lines):
        fence = re.match(r"^(\s*)(```+)\s*(\w*)", lines[i])
        if not fence:
            i += 1
            continue
        indent, ticks, lang = fence.groups()
        end = next((j for j in range(i + 1, len(lines)) if lines[j].strip() == ticks), len(lines))
        if lang in SHELLS:
            yield i + 2, [line.removeprefix(indent) for line in lines[i + 1 : end]]
        i = end + 1


def commands(page: Path, text: str) -> Iterator[Command]:
    """Every simple command of the page's shell blocks, with the line it starts on."""
    for first, block in shell_blocks(text):
        logical, start, heredoc = "", None, None
        for offset, line in enumerate(block):
            if heredoc:  # a here-document's lines are data, not commands
                heredoc = None if line.strip() == heredoc else heredoc
                continue
            start = first + offset if start is None else start
            line = re.sub(r"^\s*\$ ", "", line)  # a prompt someone copied in
            if line.rstrip().endswith("\\"):
                logical += line.rstrip()[:-1] + " "
                continue
            if m := re.search(r"<<-?\s*['\"]?(\w+)['\"]?", line):
                heredoc = m[1]
            yield from _split(relative(page), start, logical + line)
            logical, start = "", None


def _split(page: str, line: int, text: str) -> Iterator[Command]:
    lexer = shlex.shlex(text, posix=True, punctuation_chars=";&|")
    lexer.whitespace_split, lexer.commenters = True, "#"
    try:
        tokens = [*lexer, ";"]
    except ValueError as e:  # an unclosed quote: say so rather than stop every other check
        yield Command(page, line, ("#unreadable", f"{e}: {text.strip()}"))
        return
    words: list[str] = []
    for token in tokens:
        if token not in (";", "&&", "||", "|", "&"):
            words.append(token)
            continue
        while words and (words[0] in KEYWORDS or re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", words[0])):
            words.pop(0)
        if words and words[0] not in ("for", "if", "while", "until", "case"):
            yield Command(page, line, tuple(words))
        words = []


def expand(command: Command) -> list[str]:
    """The argv with placeholder variables expanded; an unknown variable is a failure."""
    out = []
    for word in command.argv:
        for name in re.findall(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)\}?", word):
            if name not in PLACEHOLDERS:
                raise AssertionError(
                    f"${name} is not a placeholder of the docs test ({', '.join(PLACEHOLDERS)})"
                )
        out.append(re.sub(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)\}?", lambda m: PLACEHOLDERS[m[1]], word))
    return out


# --- one checker per program; each returns a reason, or None when the command is fine ---------------


def _run(argv: list[str]) -> str | None:
    result = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT, timeout=120)
    if result.returncode == 0:
        return None
    return f"`{shlex.join(argv[:2])} ...` exited {result.returncode}: {(result.stderr or result.stdout).strip()[-600:]}"


def check_helm(argv: list[str]) -> str | None:
    helm = str(HELM) if HELM.exists() else "helm"
    sub, rest = argv[1] if len(argv) > 1 else "", argv[2:]
    if sub in ("template", "lint"):
        extra = (
            ["--kube-version", "1.31.0"]
            if sub == "template" and "--kube-version" not in rest
            else []
        )
        return _run([helm, sub, *rest, *extra])
    if sub not in ("install", "upgrade"):
        return None  # helm test, status, uninstall: need a cluster
    positional, values, reuse, i = [], [], False, 0
    while i < len(rest):
        word = rest[i]
        flag = word.split("=", 1)[0]
        if flag in HELM_VALUE_FLAGS | HELM_DROPPED_VALUE_FLAGS and "=" not in word:
            if flag in HELM_VALUE_FLAGS:
                values += rest[i : i + 2]
            i += 2
            continue
        if flag in HELM_VALUE_FLAGS:
            values.append(word)
        elif word == "--reuse-values":
            reuse = True
        elif word.startswith("-") and flag not in HELM_DROPPED_SWITCHES | HELM_DROPPED_VALUE_FLAGS:
            return f"helm flag {word}: the docs test does not know it (HELM_VALUE_FLAGS / HELM_DROPPED_SWITCHES)"
        elif not word.startswith("-"):
            positional.append(word)
        i += 1
    if len(positional) != 2:
        return f"expected `helm {sub} RELEASE CHART`; received {len(positional)} positional words {positional}"
    if sub == "install" and reuse:
        return "--reuse-values is a helm upgrade flag"
    given = [*(REUSED if reuse else ()), *values]
    failed = _run([helm, "template", *positional, "--kube-version", "1.31.0", *given]) or _run(
        [helm, "lint", positional[1], "--strict", *given]
    )
    if (
        failed and not reuse
    ):  # the mistake issue 26 found: a feature block written as a fresh install
        failed += "\n       (a fresh install sets its images itself; on an installed release add --reuse-values)"
    return failed


def _parse(
    parser: argparse.ArgumentParser,
    args: list[str],
    configs: tuple[type, ...] = (),
    prefix: str = "",
) -> str | None:
    """argparse's verdict on the words; then, for `train` and leaf-serve, the options' own checks (types, choices)."""
    out, err = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            parsed = parser.parse_args(args)
    except SystemExit as e:
        return None if e.code == 0 else err.getvalue().strip().splitlines()[-1]
    try:
        for cls in configs:
            resolve(
                cls, prefix, parsed, environ={}
            )  # what the program does first, and nothing after
    except LeafError as e:
        return str(e)
    return None


def serve_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="leaf-serve"
    )  # as leaf_serve.__main__.parse_config builds it
    add_arguments(parser, ServeConfig, SERVE_PREFIX)
    return parser


def makefile_targets() -> set[str]:
    text = (ROOT / "Makefile").read_text()
    return {m[1] for m in re.finditer(r"^([A-Za-z0-9_.-]+)\s*:(?!=)", text, re.M)}


def check_make(argv: list[str]) -> str | None:
    missing = [
        w
        for w in argv[1:]
        if "=" not in w and not w.startswith("-") and w not in makefile_targets()
    ]
    return f"no Makefile target {', '.join(missing)}" if missing else None


def check_pip(argv: list[str]) -> str | None:
    extras = set(
        tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    )
    for word in argv[2:]:
        if m := re.fullmatch(r"\.\[([\w,-]+)\]", word):
            unknown = set(m[1].split(",")) - extras
            if unknown:
                return f"pyproject.toml has no extra {', '.join(sorted(unknown))}"
    return None


def check_script(argv: list[str]) -> str | None:
    script = argv[1] if argv[0] in PYTHONS else argv[0]
    if argv[0] in PYTHONS and (len(argv) < 2 or script.startswith("-")):
        return None
    return None if (ROOT / script).exists() else f"{script} does not exist"


CHECKED = {"helm", "leaf-train", "leaf-serve", "make", "pip"}


def checked(head: str) -> bool:
    return head in CHECKED | PYTHONS or ("/" in head and head.split("/")[0] in top_level())


def check(command: Command) -> str | None:
    """Why the command is wrong, or None; commands that need a cluster or the network are not run."""
    if command.argv[0] == "#unreadable":
        return f"cannot split the line into words ({command.argv[1]})"
    if not checked(command.argv[0]):
        return None  # kubectl, curl, podman, ...: not run here
    try:
        argv = expand(command)
    except AssertionError as e:
        return str(e)
    head = argv[0]
    if head == "helm":
        return check_helm(argv)
    if head == "leaf-train":
        configs = tuple(cls for _, cls in train_components()) if argv[1:2] == ["train"] else ()
        return _parse(train_parser(), argv[1:], configs, TRAIN_PREFIX)
    if head == "leaf-serve":
        return _parse(serve_parser(), argv[1:], (ServeConfig,), SERVE_PREFIX)
    if head == "make":
        return check_make(argv)
    if head == "pip":
        return check_pip(argv) if argv[1:2] == ["install"] else None
    return check_script(argv)


# --- page-wide rules ------------------------------------------------------------------------------------


@functools.cache
def top_level() -> set[str]:
    """The repository's top-level files and folders: what git tracks, or (an export without .git) what is there."""
    listed = subprocess.run(["git", "ls-files"], capture_output=True, text=True, cwd=ROOT)
    if listed.returncode == 0 and listed.stdout:
        return {f.split("/")[0] for f in listed.stdout.splitlines()}
    untracked = {".git", ".venv", ".tools", ".cache", ".pytest_cache", "out", "demo-output"}
    return {p.name for p in ROOT.iterdir()} - untracked


def path_mentions(text: str) -> Iterator[tuple[int, str]]:
    tops = sorted(top_level(), key=len, reverse=True)
    word = re.compile(
        r"(?<![\w./:@-])("
        + "|".join(re.escape(t) for t in tops)
        + r")(?=[/\s`'\"),:;]|$)([\w./*-]*)"
    )
    for n, line in enumerate(text.splitlines(), 1):
        for m in word.finditer(line):
            yield n, (m[1] + m[2]).rstrip(".,:;")


def slug(heading: str) -> str:
    """GitHub's anchor of a heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    return {slug(m[1]) for m in re.finditer(r"^#+ (.+)$", page.read_text(), re.M)}


def link_problems(page: Path, text: str) -> Iterator[str]:
    for n, line in enumerate(text.splitlines(), 1):
        for target in re.findall(r"\]\(([^)\s]+)\)", line):
            if re.match(r"^[a-z]+:", target):
                continue
            file, _, anchor = target.partition("#")
            dest = (page.parent / file).resolve() if file else page
            if not dest.exists():
                yield f"{relative(page)}:{n}: link {target}: {file} does not exist"
            elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
                yield f"{relative(page)}:{n}: link {target}: {relative(dest)} has no heading #{anchor}"


def exposed_series() -> set[str]:
    """Every series name leaf-serve's /metrics can show, and the histogram families people name."""
    metrics, names = ServeMetrics(), set()
    # Under --processes the supervisor's restart counts join /metrics too (a collector only workers register).
    supervised = [WorkerRestarts("/nonexistent").collect()]
    for families in (metrics.registry.collect(), metrics.live.collect(), *supervised):
        for family in families:
            if family.type == "counter":
                names |= {family.name + "_total", family.name + "_created"}
            elif family.type == "histogram":
                names |= {
                    family.name,
                    *(family.name + s for s in ("_bucket", "_sum", "_count", "_created")),
                }
            else:
                names.add(family.name)
    return names


# --- the tests ------------------------------------------------------------------------------------------

IDS = [relative(p) for p in PAGES]


@pytest.mark.parametrize("page", PAGES, ids=IDS)
def test_every_shell_command_runs_or_parses(page: Path):
    failures = [
        f"{c}\n    -> {reason}" for c in commands(page, page.read_text()) if (reason := check(c))
    ]
    assert failures == [], "\n".join(failures)


@pytest.mark.parametrize("page", PAGES, ids=IDS)
def test_every_repository_path_and_link_exists(page: Path):
    text = page.read_text()
    failures = [
        f"{relative(page)}:{n}: {path} does not exist"
        for n, path in path_mentions(text)
        if not (list(ROOT.glob(path)) if "*" in path else (ROOT / path).exists())
    ]
    failures += list(link_problems(page, text))
    assert failures == [], "\n".join(failures)


def test_every_docs_pointer_in_the_code_resolves():
    """Module docstrings are short and point to docs/ (``docs/serving.md#limits``) for the long
    explanations: a renamed heading or page would leave the code pointing nowhere."""
    sources = [*(ROOT / "job").rglob("*.py"), *(ROOT / "serve").rglob("*.py")]
    pointers = [
        (src, n, m[1], m[2])
        for src in sources
        for n, line in enumerate(src.read_text().splitlines(), 1)
        for m in re.finditer(r"\b(docs/[\w.-]+\.md)(?:#([\w-]+))?", line)
    ]
    assert len(pointers) > 10, "the code points to docs/ in fewer places than expected"
    failures = [
        f"{relative(src)}:{n}: {page}" + (f"#{anchor}" if anchor else "")
        for src, n, page, anchor in pointers
        if not (ROOT / page).exists() or (anchor and anchor not in anchors(ROOT / page))
    ]
    assert failures == [], "\n".join(failures)


@pytest.mark.parametrize("page", PAGES, ids=IDS)
def test_every_metric_name_is_one_the_server_exposes(page: Path):
    exposed = exposed_series()
    failures = [
        f"{relative(page)}:{n}: {name} is not a series of /metrics (counters end in _total)"
        for n, line in enumerate(page.read_text().splitlines(), 1)
        for name in re.findall(r"\bleaf_serve_[a-z0-9_]+", line)
        if name not in exposed
    ]
    assert failures == [], "\n".join(failures)


@pytest.mark.parametrize("page", PAGES, ids=IDS)
def test_every_capture_id_is_valid(page: Path):
    failures = []
    for n, line in enumerate(page.read_text().splitlines(), 1):
        for capture_id in re.findall(r"\bcapture-\d{8}T[0-9A-Za-z]*-[0-9a-z]+", line):
            try:
                check_capture_id(capture_id)
            except InvalidName as e:
                failures.append(f"{relative(page)}:{n}: {e}")
    assert failures == [], "\n".join(failures)


def test_the_shell_commands_are_found():
    """The extraction itself: README's install and first-retrain commands are among those checked."""
    found = {c.argv[:2] for page in PAGES for c in commands(page, page.read_text())}
    assert {
        ("helm", "install"),
        ("leaf-train", "submit"),
        ("make", "demo"),
        ("make", "test"),
    } <= found


def test_the_readme_is_a_front_door_and_ci_runs_its_test_command():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 200, (
        "README.md is the front door: reference belongs in docs/"
    )
    opening = [c.argv for c in commands(ROOT / "README.md", readme)][:2]
    assert opening == [("make", "demo"), ("make", "test")], "the README opens with the two commands"
    ci = [
        line
        for line in (ROOT / ".ci" / "run").read_text().splitlines()
        if line and not line.startswith("#")
    ]
    assert ci[-1] == "make test", ".ci/run runs exactly the README's test command"


# Each rule must be able to fail: a page with one mistake per line, and the reason each one gets.
MISTAKES = [
    ("leaf-train train --data s3://a/b --no-such-flag 1", "unrecognized arguments: --no-such-flag"),
    ("leaf-train fly", "invalid choice: 'fly'"),
    ("leaf-serve --model m --port-number 1", "unrecognized arguments: --port-number"),
    ("leaf-serve --model m --max-batch-size many", "expected an integer, received 'many'"),
    (
        "leaf-train train --data d --output o --mixed-precision fast",
        "expected one of auto, on, off",
    ),
    ("make no-such-target", "no Makefile target no-such-target"),
    ("pip install '.[gui]'", "no extra gui"),
    ("python3 scripts/no_such.py", "scripts/no_such.py does not exist"),
    ("helm install leaf ./charts/leaf-train --set s3.data=$DATA", "set training.image.repository"),
    (
        "helm upgrade leaf ./charts/leaf-train --reuse-values --set training.config.headLr=fast",
        "headLr",
    ),
    (
        "helm upgrade leaf ./charts/leaf-train --reuse-values --set s3.existingSecret=keys",
        "serving.s3.existingSecret",
    ),
    ("helm upgrade leaf ./charts/leaf-train --reuse-values --set-literal a=b", "does not know it"),
    ("leaf-train models list --output $BUCKET", "$BUCKET is not a placeholder"),
    ("$ make no-such-target", "no Makefile target no-such-target"),
    ("leaf-train inbox list --output 'unclosed", "cannot split"),
]


@pytest.mark.parametrize(("line", "reason"), MISTAKES, ids=[m[0] for m in MISTAKES])
def test_a_wrong_command_fails_naming_its_line(tmp_path: Path, line: str, reason: str):
    page = tmp_path / "page.md"
    page.write_text(f"# A page\n\ntext\n\n```bash\nmake demo   # fine\n{line}\n```\n")
    failures = [(c.line, why) for c in commands(page, page.read_text()) if (why := check(c))]
    assert len(failures) == 1 and failures[0][0] == 7 and reason in failures[0][1], failures


@pytest.mark.parametrize(
    ("text", "found"),
    [
        ("see `scripts/no_such.sh`", "scripts/no_such.sh does not exist"),
        ("[the chart](../charts/leaf-train/values.yml)", "does not exist"),
        ("[IAM](kubernetes.md#no-such-heading)", "has no heading #no-such-heading"),
    ],
)
def test_a_wrong_path_or_link_is_named(text: str, found: str):
    page = ROOT / "docs" / "page.md"  # not written: only its folder matters for relative links
    failures = [p for _, p in path_mentions(text) if not (ROOT / p).exists()]
    failures = [f"{p} does not exist" for p in failures] + [
        why for why in link_problems(page, text)
    ]
    assert any(found in f for f in failures), failures


def test_a_counter_without_total_is_not_a_series():
    exposed = exposed_series()
    assert "leaf_serve_reloads_total" in exposed and "leaf_serve_reloads" not in exposed
    assert "leaf_serve_request_seconds_bucket" in exposed and "leaf_serve_model_info" in exposed


def test_here_documents_are_data(tmp_path: Path):
    page = tmp_path / "page.md"
    page.write_text(
        "```bash\ncat > values.yaml <<'EOF'\nmake no-such-target\nEOF\nmake no-such-either\n```\n"
    )
    failures = [(c.line, why) for c in commands(page, page.read_text()) if (why := check(c))]
    assert failures == [(5, "no Makefile target no-such-either")]
