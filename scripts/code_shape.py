"""Measure the shape of the code (issue #12): longest functions, module sizes, repeated code, invariants.

Usage: ``python scripts/code_shape.py [--tree DIR] [--duplicates CMD]``; prints Markdown. Run it on two
checkouts (``git worktree add /tmp/before <commit>``) to compare before and after with the same commands.

What it counts, in ``job/`` and ``serve/`` (protoc's generated module left out):

* the ten longest functions (lines from ``def`` to the last line of the body, decorators excluded);
* module sizes (lines), the largest ten and how many exceed 300;
* the rows of the workplace's ``duplicates`` tool over those two folders (if it is installed);
* for each invariant issue #12 names, the number of places that write it (regular expressions over the
  source, listed below; a count, not a judgement: each hit is a place a reader has to check);
* issue #21's prose counts: the share of lines inside docstrings, the longest module docstring, the share
  of lines over 100 characters, functions over 40 lines;
* the places that name an accepted image format (``FORMAT_PATTERN``) in ``job/``, ``serve/`` and the page's
  ``.js``/``.html`` files, one per line that names one.
"""

from __future__ import annotations

import argparse
import ast
import re
import shutil
import subprocess
from pathlib import Path

FOLDERS = ("job", "serve")
# invariant -> (what it means, regex counted over job/ and serve/)
INVARIANTS: dict[str, tuple[str, str]] = {
    "verified version read": (
        "places that read a version's manifest and check its files (champion, fetch_version, ...)",
        r"read_manifest\(|read_verified_version\(",
    ),
    "pointer URI parsing": (
        "places that cut latest.json off a URI",
        r"\[:\s*-len\(POINTER_FILE\)\]|removesuffix\(POINTER",
    ),
    "tensor names": (
        "string literals naming the model's tensors",
        r"[\"'](image|probabilities)[\"']",
    ),
    "model-name rule": (
        "regular expressions that define a valid model name",
        r"re\.compile\(r?\"\^\[a-z0-9\]",
    ),
    "sha256 outside sha256_hex": (
        "direct hashlib.sha256(...).hexdigest() of artefact bytes",
        r"hashlib\.sha256\(",
    ),
    "read_pointer unpacking": ("call sites of read_pointer", r"\bread_pointer\("),
    "download implementations": ("definitions of a store's download()", r"def download\("),
    "botocore try/except": (
        "except clauses for botocore errors",
        r"except \(ClientError, BotoCoreError\)",
    ),
    "error roots": (
        "exception classes deriving directly from a builtin exception",
        r"^class \w+\((Exception|RuntimeError|ValueError)\):",
    ),
    "config error classes": (
        "classes for a bad option",
        r"^class (ConfigError|ConfigurationError)\b",
    ),
    "MODEL_FILE definitions": ("module constants named MODEL_FILE", r"^MODEL_FILE\s*="),
    "ENV_PREFIX definitions": ("module constants named ENV_PREFIX", r"^ENV_PREFIX\s*="),
    "_verdict definitions": ("functions named _verdict", r"def _verdict\("),
}

# A line that names one of the accepted image formats as a format (a MIME type, an extension in a list, a
# Pillow format name or a magic number): each is a place "accept WebP" would have to edit.
FORMAT_PATTERN = re.compile(
    r"image/(jpeg|png|webp|gif)|[\"'](\.?jpe?g|\.?png|JPEG|PNG|MPO)[\"']|\\x89PNG|\\xff\\xd8|\.jpe?g,|\.png,"
)
LONG_LINE = 100
LONG_FUNCTION = 40


def sources(tree: Path) -> list[Path]:
    files = []
    for folder in FOLDERS:
        files += [p for p in (tree / folder).rglob("*.py") if not p.name.endswith("_pb2.py")]
    return sorted(files)


def functions(tree: Path) -> list[tuple[int, str]]:
    found = []
    for path in sources(tree):
        module = ast.parse(path.read_text())
        for node in ast.walk(module):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                found.append((lines, f"{path.relative_to(tree)}:{node.lineno} {node.name}"))
    return sorted(found, reverse=True)


def docstring_lines(tree: Path) -> tuple[int, int, str]:
    """Lines inside docstrings (module, class, function), and the longest module docstring with its file."""
    total, longest, where = 0, 0, ""
    for path in sources(tree):
        module = ast.parse(path.read_text())
        for node in ast.walk(module):
            if not isinstance(
                node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
            ):
                continue
            first = node.body[0] if node.body else None
            value = getattr(first, "value", None) if isinstance(first, ast.Expr) else None
            if isinstance(value, ast.Constant) and isinstance(value.value, str):
                n = first.end_lineno - first.lineno + 1
                total += n
                if isinstance(node, ast.Module) and n > longest:
                    longest, where = n, str(path.relative_to(tree))
    return total, longest, where


def format_places(tree: Path) -> list[str]:
    """``file:line`` of every line naming an image format, in Python sources and the page's files."""
    files = sources(tree) + sorted((tree / "serve").rglob("ui/*.[jh]*"))
    found = []
    for path in files:
        for i, line in enumerate(path.read_text().splitlines(), 1):
            if FORMAT_PATTERN.search(line):
                found.append(f"{path.relative_to(tree)}:{i}")
    return found


def duplicate_rows(tree: Path, command: str) -> str:
    if not shutil.which(command):
        return f"({command} not installed)"
    rows = 0
    for folder in FOLDERS:
        out = subprocess.run(
            [command, "--repo", str(tree / folder), "--most", "200", "--seconds", "120"],
            capture_output=True,
            text=True,
            timeout=300,
        ).stdout
        rows += sum(1 for line in out.splitlines() if re.match(r"^D\d+ ", line))
    return str(rows)


def report(tree: Path, command: str) -> str:
    files = sources(tree)
    sizes = sorted(
        ((len(p.read_text().splitlines()), str(p.relative_to(tree))) for p in files), reverse=True
    )
    longest = functions(tree)
    text = "\n".join(p.read_text() for p in files)
    lines = [f"### {tree}", "", "Longest functions (lines):", ""]
    lines += [f"- {n:4d}  {where}" for n, where in longest[:10]]
    lines += ["", f"Modules: {len(files)}, {sum(n for n, _ in sizes)} lines; over 300 lines: "
              f"{sum(1 for n, _ in sizes if n > 300)}; largest:", ""]  # fmt: skip
    lines += [f"- {n:4d}  {name}" for n, name in sizes[:10]]
    all_lines = text.splitlines()
    doc, doc_longest, doc_where = docstring_lines(tree)
    long_lines = sum(1 for line in all_lines if len(line) > LONG_LINE)
    places = format_places(tree)
    lines += ["", f"Docstring lines: {doc} of {len(all_lines)} ({100 * doc / len(all_lines):.1f} %); longest module "
              f"docstring: {doc_longest} lines ({doc_where})"]  # fmt: skip
    lines += [
        f"Lines over {LONG_LINE} characters: {long_lines} ({100 * long_lines / len(all_lines):.1f} %)"
    ]
    lines += [
        f"Functions over {LONG_FUNCTION} lines: {sum(1 for n, _ in longest if n > LONG_FUNCTION)}"
    ]
    lines += [
        f"Lines naming an image format: {len(places)} in {len({p.split(':')[0] for p in places})} files"
    ]
    lines += [
        "",
        f"`duplicates` rows (job/ and serve/): {duplicate_rows(tree, command)}",
        "",
        "| invariant | places |",
    ]
    lines += ["|---|---|"]
    for name, (_, pattern) in INVARIANTS.items():
        lines.append(f"| {name} | {len(re.findall(pattern, text, re.M))} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tree", default=str(Path(__file__).resolve().parent.parent))
    parser.add_argument("--duplicates", default="duplicates", help="the duplicates command")
    args = parser.parse_args()
    print(report(Path(args.tree), args.duplicates))


if __name__ == "__main__":
    main()
