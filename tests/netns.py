"""Network namespaces that tests and benchmarks create for themselves (root, iproute2).

A namespace from ``loopback_namespace`` holds only its own ``lo`` (multicast on
it, routed there) and no default route: nothing run inside can reach any real
network. It is always emptied (every process in it killed by PID) and deleted.
"""

from collections.abc import Callable, Iterator
import contextlib
import os
from pathlib import Path
import select
import shutil
import signal
import subprocess
import threading
import time
from typing import Any, cast

import pytest

CHROMIUM = "/usr/bin/chromium"

# What a test running Chromium in its own namespace needs (scripts/install_e2e_deps).
BROWSER_IN_NAMESPACE = [
    pytest.mark.skipif(
        not hasattr(os, "geteuid") or os.geteuid() != 0,
        reason="needs root to create a network namespace (ip netns add)",
    ),
    pytest.mark.skipif(
        shutil.which("ip") is None, reason="iproute2 'ip' is missing (scripts/install_e2e_deps)"
    ),
    pytest.mark.skipif(
        not os.path.exists(CHROMIUM),
        reason=f"{CHROMIUM} is missing (scripts/install_e2e_deps)",
    ),
]


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


@contextlib.contextmanager
def bridged_namespaces(hub: str, hub_address: str, members: dict[str, str]) -> Iterator[None]:
    """A hub namespace with a bridge, and one namespace per member {name: address}.

    Every member's `eth0` is a veth port of the hub's `br0` (multicast snooping
    off: the bridge floods multicast to every port, like a dumb switch), all in
    one /24 that exists only here, with no default route. Raises RuntimeError
    when namespaces cannot be made; always deletes what it created.
    """
    created: list[str] = []
    try:
        for name in (hub, *members):
            ip("netns", "add", name)
            created.append(name)
            ip("-n", name, "link", "set", "lo", "up")
        ip("-n", hub, "link", "add", "br0", "type", "bridge", "mcast_snooping", "0")
        ip("-n", hub, "addr", "add", f"{hub_address}/24", "dev", "br0")
        ip("-n", hub, "link", "set", "br0", "up")
        for index, (name, address) in enumerate(members.items()):
            port = f"v{index}"
            ip("-n", hub, "link", "add", port, "type", "veth", "peer", "eth0", "netns", name)
            ip("-n", hub, "link", "set", port, "master", "br0", "up")
            ip("-n", name, "addr", "add", f"{address}/24", "dev", "eth0")
            ip("-n", name, "link", "set", "eth0", "up")
        yield
    finally:
        for name in reversed(created):
            with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
                ip("netns", "del", name)


def in_namespace[T](name: str, work: Callable[[], T], timeout: float = 20.0) -> T:
    """Run work() on a fresh thread inside network namespace `name`, then leave it.

    A namespace switch (setns) is per thread: the thread enters, works, and
    goes back before it ends, so no other thread ever runs inside.
    """
    box: dict[str, Any] = {}

    def target() -> None:
        home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
        netns = os.open(f"/run/netns/{name}", os.O_RDONLY)
        try:
            os.setns(netns, os.CLONE_NEWNET)
            try:
                box["result"] = work()
            finally:
                os.setns(home, os.CLONE_NEWNET)
        except BaseException as err:  # re-raised in the calling thread
            box["error"] = err
        finally:
            os.close(netns)
            os.close(home)

    thread = threading.Thread(target=target, name=f"netns-{name}", daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        raise RuntimeError(f"work in {name} did not finish within {timeout} s")
    if "error" in box:
        raise box["error"]
    return cast(T, box["result"])


def wait_ready(proc: subprocess.Popen[str], timeout: float = 15.0) -> None:
    """Wait (bounded in time and lines) for a started process's READY line."""
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    for _ in range(1000):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        ready, _, _ = select.select([proc.stdout], [], [], remaining)
        if not ready:
            break
        line = proc.stdout.readline()
        if line.startswith("READY"):
            return
        if not line:
            break
    stderr = proc.stderr.read() if proc.stderr and proc.poll() is not None else ""
    raise RuntimeError(f"process not ready: {stderr[-800:]}")


def stop_process(proc: subprocess.Popen[str], timeout: float = 10.0) -> str:
    """SIGTERM a process we started (by its PID), SIGKILL if it lingers; its stdout.

    Whatever goes wrong, the process does not outlive the call; the error is re-raised.
    """
    try:
        if proc.poll() is None:
            proc.terminate()
        out, _ = proc.communicate(timeout=timeout)
    except BaseException:
        proc.kill()
        proc.wait(timeout=5)
        raise
    return out or ""


def can_make_namespace() -> bool:
    """Whether this process can create a network namespace (root, and `ip`)."""
    return hasattr(os, "geteuid") and os.geteuid() == 0 and shutil.which("ip") is not None


def rerun_in_namespace(command: list[str], prefix: str, cwd: Path) -> int:
    """Run `command` in a fresh loopback-only namespace; return its exit status.

    For a benchmark that runs Home Assistant's cast integration (zeroconf,
    known-host polling): inside, no packet can reach a real network. SIGINT
    and SIGTERM are passed on to the command (by its PID); the namespace, and
    any process left in it, is removed on the way out.
    """
    name = f"{prefix}{os.getpid()}"
    with loopback_namespace(name):
        proc = subprocess.Popen(["ip", "netns", "exec", name, *command], cwd=cwd)

        def forward(signum: int, _frame: Any) -> None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signum)

        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, forward)
        return proc.wait()
