"""A real multicast WS-Discovery scan inside network namespaces this test creates.

Topology (all of it exists only inside the namespaces, with no default route):

    lc<pid>h  br0 10.213.7.1/24  -- the scanner (core.wsdiscovery.scan)
      |-- veth -- lc<pid>a  eth0 10.213.7.11   two cameras (Profile/Streaming), one process
      |-- veth -- lc<pid>b  eth0 10.213.7.12   two cameras (Profile/T only; Device type only)
      `-- veth -- lc<pid>c  eth0 10.213.7.13   a spoofer (100 fake devices) and a device
                                                whose XAddr is a public address

Responders run as subprocesses under `ip netns exec`; the scanner runs in this process, on a
dedicated thread that enters the hub namespace with setns(2) (a namespace switch is per
thread) and leaves it before it ends. Nothing is sent on a real interface: the namespaces
hold only these links, and every namespace is deleted at the end whatever happens.
"""

import asyncio
from collections.abc import Iterator
import contextlib
import os
from pathlib import Path
import shutil
import subprocess
import sys
import time

import pytest

from custom_components.localcam.core.netpolicy import NetPolicy
from custom_components.localcam.core.wsdiscovery import DiscoveredDevice, scan
from tests.netns import bridged_namespaces, in_namespace, stop_process, wait_ready

REPO = Path(__file__).resolve().parents[2]
PREFIX = f"lc{os.getpid()}"
SUBNET = "10.213.7"
HUB = f"{PREFIX}h"
CAMERA_NS = {"a": f"{SUBNET}.11", "b": f"{SUBNET}.12", "c": f"{SUBNET}.13"}
pytestmark = [
    pytest.mark.skipif(
        not hasattr(os, "geteuid") or os.geteuid() != 0,
        reason="needs root to create network namespaces (ip netns add)",
    ),
    pytest.mark.skipif(shutil.which("ip") is None, reason="iproute2 'ip' is not installed"),
]


@contextlib.contextmanager
def namespaces() -> Iterator[None]:
    """Create the hub and camera namespaces with a bridge; always delete them."""
    members = {f"{PREFIX}{key}": address for key, address in CAMERA_NS.items()}
    try:
        context = bridged_namespaces(HUB, f"{SUBNET}.1", members)
        context.__enter__()
    except RuntimeError as err:
        pytest.skip(f"cannot create the network namespaces here: {err}")
    try:
        yield
    finally:
        context.__exit__(None, None, None)


def _env() -> dict[str, str]:
    """The subprocess environment: the repo importable, nothing else changed."""
    return {**os.environ, "PYTHONPATH": str(REPO)}


def start_responder(key: str, *args: str) -> subprocess.Popen[str]:
    """python -m virtualcam.wsdiscovery inside camera namespace `key`, joined to multicast."""
    return subprocess.Popen(
        [
            "ip", "netns", "exec", f"{PREFIX}{key}",
            sys.executable, "-m", "virtualcam.wsdiscovery",
            "--interface", CAMERA_NS[key], *args,
        ],
        cwd=REPO,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip


def stop_all(procs: dict[str, subprocess.Popen[str]]) -> dict[str, str]:
    """Stop every responder, even when stopping one of them fails."""
    outputs: dict[str, str] = {}
    errors: list[BaseException] = []
    for key, proc in procs.items():
        try:
            outputs[key] = stop_process(proc, 5)
        except Exception as err:  # the first is re-raised below
            errors.append(err)
    if errors:
        raise errors[0]
    return outputs


def probes_seen(output: str) -> int:
    """The probe count from a responder's STATS line."""
    for line in output.splitlines():
        if line.startswith("STATS"):
            return int(line.split("probes=")[1].split()[0])
    raise AssertionError(f"no STATS line in {output!r}")


def scan_twice() -> list[tuple[float, list[DiscoveredDevice]]]:
    """A multicast scan on the hub's bridge, then one with no interfaces at all."""

    async def both() -> list[tuple[float, list[DiscoveredDevice]]]:
        out = []
        for interfaces in ([f"{SUBNET}.1"], []):
            start = time.monotonic()
            found = await scan(multicast_interfaces=interfaces, timeout=2.0, policy=NetPolicy())
            out.append((time.monotonic() - start, found))
        return out

    return asyncio.run(both())


def _scenario() -> tuple[list[tuple[float, list[DiscoveredDevice]]], dict[str, str]]:
    """Build the namespaces, start responders, run both scans, tear everything down."""
    procs: dict[str, subprocess.Popen[str]] = {}
    with namespaces():
        try:
            procs["a"] = start_responder("a", "--name", "ns-a1", "--name", "ns-a2")
            procs["b"] = start_responder("b", "--name", "ns-b1", "--mix", "t_only")
            procs["b2"] = start_responder("b", "--name", "ns-b2", "--mix", "device_only")
            procs["c"] = start_responder("c", "--spoof", "100")
            procs["c2"] = start_responder("c", "--name", "ns-public", "--xaddr-host", "8.8.8.8")
            for proc in procs.values():
                wait_ready(proc)
            scans = in_namespace(HUB, scan_twice)
        finally:
            outputs = stop_all(procs)
    return scans, outputs


@pytest.mark.usefixtures("socket_enabled")
async def test_multicast_scan_in_network_namespaces() -> None:
    """Multicast on one interface finds every real camera; spoof bounded; none without it."""
    # Subprocess waits block: run the scenario in a worker thread, not in the event loop.
    scans, outputs = await asyncio.to_thread(_scenario)
    (elapsed, found), (_, without) = scans
    hosts = {device.name: device.host for device in found}
    print(f"netns multicast scan: {len(found)} devices in {elapsed:.2f} s; without: {without}")
    assert {name: hosts.get(name) for name in ("ns-a1", "ns-a2", "ns-b1", "ns-b2")} == {
        "ns-a1": CAMERA_NS["a"],
        "ns-a2": CAMERA_NS["a"],
        "ns-b1": CAMERA_NS["b"],
        "ns-b2": CAMERA_NS["b"],
    }
    assert "ns-public" not in hosts  # its XAddr names a public address
    spoofed = [name for name in hosts if name and name.startswith("spoof-")]
    assert len(spoofed) <= 4
    assert elapsed <= 3.0
    # Without interfaces nothing is multicast: no responder saw a probe from the second scan.
    assert without == []
    assert probes_seen(outputs["a"]) == 4  # NVT + Device probes, each sent twice, once
    assert probes_seen(outputs["c"]) == 4


async def test_namespaces_are_gone() -> None:
    """Nothing named after this test run is left behind."""
    listing = await asyncio.to_thread(
        subprocess.run, ["ip", "netns", "list"], capture_output=True, text=True, timeout=10
    )
    assert PREFIX not in listing.stdout
