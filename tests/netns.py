"""Network namespaces that tests create for themselves (needs root and iproute2).

A namespace from ``loopback_namespace`` holds only its own ``lo`` (multicast on
it, routed there) and no default route: nothing run inside can reach any real
network. It is always emptied (every process in it killed by PID) and deleted.
"""

from collections.abc import Iterator
import contextlib
import os
import signal
import subprocess
import time

import pytest


def ip(*args: str) -> str:
    """Run one `ip` command; raise with its stderr on failure."""
    result = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=10, check=False)
    if result.returncode:
        raise RuntimeError(f"ip {' '.join(args)}: {result.stderr.strip()}")
    return result.stdout


def kill_processes_in(name: str) -> None:
    """SIGKILL, by PID, whatever still runs in the test's own namespace; bounded."""
    # Only the test's own driver and its children ever enter the namespace.
    for _ in range(20):
        with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
            pids = [int(pid) for pid in ip("netns", "pids", name).split()]
            if not pids:
                return
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        time.sleep(0.25)


@contextlib.contextmanager
def loopback_namespace(name: str) -> Iterator[None]:
    """A network namespace with only `lo`; always emptied and deleted."""
    try:
        ip("netns", "add", name)
    except RuntimeError as err:
        pytest.skip(f"cannot create a network namespace here: {err}")
    try:
        ip("-n", name, "link", "set", "lo", "up")
        # HA's shared aiohttp session builds a zeroconf resolver that joins mDNS on the
        # default interface; without a multicast route that fails and the config flow
        # errors. Here the only multicast route is the namespace's own loopback.
        ip("-n", name, "link", "set", "lo", "multicast", "on")
        ip("-n", name, "route", "add", "224.0.0.0/4", "dev", "lo")
        yield
    finally:
        try:
            kill_processes_in(name)
        finally:
            with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
                ip("netns", "del", name)
