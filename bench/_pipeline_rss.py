"""Child process of the input-pipeline benchmark: decode N images once and report peak memory as JSON.

Run: ``python bench/_pipeline_rss.py FOLDER N BUDGET_MB CACHE_DIR``. A fresh process per size, so one
size's peak cannot hide in another's. Besides the kernel's high-water mark (VmHWM, which counts
file-backed pages of a memory-mapped cache too) a sampler thread records the peak of anonymous
memory (RssAnon: what the process cannot give back without swap) and of file-backed pages (RssFile:
page cache the kernel can write back and drop under pressure).
"""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
from pathlib import Path


def status_kib() -> dict[str, int]:
    """VmRSS, VmHWM, RssAnon, RssFile of this process, KiB."""
    wanted = ("VmRSS", "VmHWM", "RssAnon", "RssFile")
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in wanted:
            out[name] = int(value.split()[0])
    return out


class PeakSampler(threading.Thread):
    """Polls /proc/self/status; the kernel keeps no high-water mark for RssAnon/RssFile."""

    def __init__(self, every_s: float = 0.002):
        super().__init__(daemon=True)
        self.every_s, self.peak = every_s, {"RssAnon": 0, "RssFile": 0}
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            now = status_kib()
            for k in self.peak:
                self.peak[k] = max(self.peak[k], now[k])
            time.sleep(self.every_s)

    def stop(self) -> dict[str, int]:
        self.done.set()
        self.join()
        return self.peak


def main() -> None:
    folder, n, budget_mb, cache_dir = (
        Path(sys.argv[1]),
        int(sys.argv[2]),
        int(sys.argv[3]),
        Path(sys.argv[4]),
    )
    logging.basicConfig(level=logging.WARNING)
    from leaf_common.storage import LocalStore
    from leaf_train.cache import DecodeOptions, decode_all

    store = LocalStore(folder)
    listed = sorted(store.list(), key=lambda o: o.key)
    # Keys repeat when N exceeds the folder: every slot is still read and decoded on its own.
    keys = [listed[i % len(listed)].key for i in range(n)]
    before = status_kib()
    sampler = PeakSampler()
    sampler.start()
    t = time.perf_counter()
    opts = DecodeOptions(150, memory_budget_mb=budget_mb, progress="off")
    decoded = decode_all(store, keys, opts, cache_dir=cache_dir)
    seconds = time.perf_counter() - t
    peak = sampler.stop()
    after = status_kib()
    print(
        json.dumps(
            {
                "n": n,
                "decoded_mib": round(decoded.images.nbytes / 2**20, 1),
                "on_disk": decoded.on_disk,
                "ok": int(decoded.ok.sum()),
                "seconds": round(seconds, 2),
                "rss_before_mib": round(before["VmRSS"] / 1024, 1),
                "vm_hwm_mib": round(after["VmHWM"] / 1024, 1),
                "peak_anon_mib": round(peak["RssAnon"] / 1024, 1),
                "peak_file_mib": round(peak["RssFile"] / 1024, 1),
            }
        )
    )


if __name__ == "__main__":
    main()
