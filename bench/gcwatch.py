"""Start `hass` with a record of its slow garbage collections (benchmarks only).

Usage: python bench/gcwatch.py LOG_PATH [hass arguments...]

A collection of the oldest generation walks every object hass holds; on the
benchmark host one takes 90-220 ms, and a burst of requests that meets one
waits that long. The benchmarks count them beside their figures, so a slow
burst is explained rather than guessed at, and never left out.

Each collection of generation 2, and any collection of 20 ms or more, is one
JSON line in LOG_PATH: its generation, its start and end on time.monotonic()
(CLOCK_MONOTONIC on Linux, the clock every process of the benchmark shares)
and how many objects it collected. The callback only times and writes: it
changes nothing in hass.
"""

import gc
import json
import sys
import time
from typing import Any

# A young collection this slow is worth a line too.
SLOW_S = 0.020


def watch(path: str) -> None:
    """Append a line to ``path`` for each slow or full collection from now on."""
    out = open(path, "a", buffering=1, encoding="utf-8")  # noqa: SIM115 - open for the process's life
    started = [0.0]

    def callback(phase: str, info: dict[str, Any]) -> None:
        now = time.monotonic()
        if phase == "start":
            started[0] = now
            return
        if info["generation"] == 2 or now - started[0] >= SLOW_S:
            line = {
                "generation": info["generation"],
                "start": started[0],
                "end": now,
                "collected": info["collected"],
            }
            out.write(json.dumps(line) + "\n")

    gc.callbacks.append(callback)


def main() -> int:
    """Install the watch, then run hass with the remaining arguments."""
    # This file's folder holds bench modules (cast.py, relay.py...): never
    # let hass import one of them by a top-level name.
    del sys.path[0]
    log_path, *args = sys.argv[1:]
    watch(log_path)
    from homeassistant.__main__ import main as hass_main

    sys.argv = ["hass", *args]
    return int(hass_main())


if __name__ == "__main__":
    sys.exit(main())
