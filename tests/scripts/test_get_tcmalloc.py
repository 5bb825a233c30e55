"""scripts/get-tcmalloc.sh, which `make test` runs to preload tcmalloc into the suite."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

SCRIPT = Path(__file__).parents[2] / "scripts" / "get-tcmalloc.sh"


def test_prints_the_library_when_ldconfig_lists_more_than_a_pipe_holds(tmp_path: Path) -> None:
    """The library is found near the top of a long `ldconfig -p`: the script must still read the rest,
    or ldconfig dies of SIGPIPE and pipefail fails the script (exit 141, one run in a hundred with the
    real ldconfig, whose listing just fits a pipe; every time with this one's megabyte)."""
    lib = tmp_path / "libtcmalloc_minimal.so.4"
    lib.write_bytes(b"")
    fake = tmp_path / "bin" / "ldconfig"
    fake.parent.mkdir()
    fake.write_text(
        "#!/bin/sh\n"
        f"printf '\\tlibtcmalloc_minimal.so.4 (libc6,x86-64) => {lib}\\n'\n"
        "yes '\tlibother.so.1 (libc6,x86-64) => /lib/libother.so.1' | head -n 20000\n"
    )
    fake.chmod(0o755)
    env = {**os.environ, "PATH": f"{fake.parent}:{os.environ['PATH']}"}
    proc = subprocess.run([str(SCRIPT)], env=env, capture_output=True, text=True, timeout=60)
    assert (proc.returncode, proc.stdout) == (0, f"{lib}\n"), proc.stderr
