"""Test hosts in network namespaces: a veth link each, shaped or cut with ``tc``, Chromium inside.

A :func:`lab` creates one namespace per name, each joined to the root namespace by a veth pair
on its own /30 subnet, with a default route to the root side. Everything in the root namespace
(the server under test) is then reachable from every namespace at :attr:`Lab.server_address`,
and what the server sends to a namespace leaves through that namespace's veth, so a ``tc``
qdisc on the root-side end shapes exactly that host's downlink (and one inside the namespace
its uplink). Names carry the test process's pid, so concurrent runs never collide; the lab
removes its namespaces (and with them the veth pairs) and kills what ran inside on exit.

A :func:`lan` is one L2 segment instead: a Linux bridge in the root namespace (with an address
of its own) and one namespace per name whose veth's host end is enslaved to it, all on one /24.
Namespaces reach each other and the root namespace directly, with no forwarding through the
root namespace (whose ``ip_forward`` tests must leave alone): several servers, each in its own
namespace, talk to each other as hosts on one LAN do.

Needs root and iproute2 (``ip``, ``tc``). This kernel has no netem: delay and queue depth come
from ``tbf``'s ``latency``, an outage from a ``pfifo`` of limit 0.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import random
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from typing import Any

import browser
from selenium import webdriver

__all__ = ["Lab", "Lan", "LanHost", "Namespace", "lab", "lan", "require_netns"]

IP = shutil.which("ip") or "/usr/sbin/ip"
TC = shutil.which("tc") or "/usr/sbin/tc"

#: chromedriver's port inside a namespace (each namespace has its own port space).
CHROMEDRIVER_BASE_PORT = 9515
#: How long to wait for a chromedriver in a namespace to accept connections.
CHROMEDRIVER_START_S = 10.0

_counter = itertools.count()


def require_netns() -> None:
    """Fail (not skip) with a clear reason when this machine cannot create namespaces."""
    if os.geteuid() != 0:
        raise RuntimeError("network-namespace tests need root (ip netns, tc)")
    for tool in (IP, TC):
        if not os.path.exists(tool):
            raise RuntimeError(f"{tool} not found: install the Debian package iproute2")


def _run(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    if check and result.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed: {result.stderr.strip()}")
    return result


def _tag() -> str:
    """A short name part unique to this process and call (interface names have 15 bytes)."""
    return f"{os.getpid() % 100000}{next(_counter) % 100}"


def _free_second_octet() -> int:
    """A second octet of 10.0.0.0/8 that no address on this machine uses yet."""
    return random.choice([octet for octet in range(64, 250) if octet not in _used_second_octets()])


def _used_second_octets() -> set[int]:
    out = _run(IP, "-4", "-o", "addr", "show").stdout
    used = set()
    for line in out.splitlines():
        for word in line.split():
            if word.startswith("10.") and "/" in word:
                used.add(int(word.split(".")[1]))
    return used


class Namespace:
    """One test host: a namespace, its veth pair, and the ``tc`` knobs on both ends."""

    def __init__(self, name: str, index: int, octet2: int, tag: str) -> None:
        self.name = name
        self.netns = f"sfu{tag}n{index}"
        self.host_iface = f"v{tag}h{index}"
        self.ns_iface = f"v{tag}n{index}"
        self.gateway = f"10.{octet2}.{index}.1"
        self.address = f"10.{octet2}.{index}.2"
        self._ports = itertools.count(CHROMEDRIVER_BASE_PORT)
        #: What :meth:`popen` started: killed on exit by pid as well, since a process started
        #: just before may not have entered the namespace yet (``ip netns exec`` joins it and
        #: then execs the command in the same pid), where ``ip netns pids`` cannot see it.
        self._started: list[subprocess.Popen[Any]] = []

    # -- life cycle ---------------------------------------------------------------------------

    def create(self) -> None:
        """Make the namespace and its link, addressed and up, with a default route out."""
        _run(IP, "netns", "add", self.netns)
        _run(IP, "link", "add", self.host_iface, "type", "veth", "peer", "name", self.ns_iface)
        _run(IP, "link", "set", self.ns_iface, "netns", self.netns)
        _run(IP, "addr", "add", f"{self.gateway}/30", "dev", self.host_iface)
        _run(IP, "link", "set", self.host_iface, "up")
        self.exec(IP, "addr", "add", f"{self.address}/30", "dev", self.ns_iface)
        self.exec(IP, "link", "set", self.ns_iface, "up")
        self.exec(IP, "link", "set", "lo", "up")
        self.exec(IP, "route", "add", "default", "via", self.gateway)

    def destroy(self) -> None:
        """Kill what runs inside, then remove the namespace (which removes the veth pair)."""
        for proc in self._started:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
        pids = _run(IP, "netns", "pids", self.netns, check=False).stdout.split()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid), signal.SIGKILL)
        _run(IP, "netns", "del", self.netns, check=False)
        _run(IP, "link", "del", self.host_iface, check=False)

    # -- running things inside ----------------------------------------------------------------

    def argv(self, *command: str) -> list[str]:
        """``command`` prefixed so that it runs inside this namespace."""
        return [IP, "netns", "exec", self.netns, *command]

    def exec(self, *command: str) -> subprocess.CompletedProcess[str]:
        """Run ``command`` inside the namespace to completion; raise if it fails."""
        return _run(*self.argv(*command))

    def popen(self, command: Sequence[str], **kwargs: Any) -> subprocess.Popen[Any]:
        """Start ``command`` inside the namespace (the lab kills it on exit if still running)."""
        proc = subprocess.Popen(self.argv(*command), **kwargs)
        self._started.append(proc)
        return proc

    @contextlib.contextmanager
    def chromium(self, extra_flags: tuple[str, ...] = ()) -> Iterator[webdriver.Remote]:
        """A headless Chromium running inside the namespace, driven from the root namespace.

        chromedriver runs inside (Chromium's DevTools port is on the namespace's loopback) and
        listens on the namespace's address for this process only. Pages served from the
        root namespace are not a secure context over plain HTTP, so pass
        ``--unsafely-treat-insecure-origin-as-secure=http://HOST:PORT`` for getUserMedia.
        """
        port = next(self._ports)
        driver_proc = self.popen(
            [
                browser.CHROMEDRIVER,
                f"--port={port}",
                f"--allowed-ips={self.gateway}",
                "--allowed-origins=*",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        profile = tempfile.mkdtemp(prefix="sfu-chromium-ns-")
        options = webdriver.ChromeOptions()
        options.binary_location = browser.CHROMIUM
        for flag in (*browser.FLAGS, *extra_flags, f"--user-data-dir={profile}"):
            options.add_argument(flag)
        driver: webdriver.Remote | None = None
        try:
            deadline = time.monotonic() + CHROMEDRIVER_START_S
            while True:
                try:
                    driver = webdriver.Remote(f"http://{self.address}:{port}", options=options)
                    break
                except Exception:
                    if time.monotonic() > deadline or driver_proc.poll() is not None:
                        raise
                    time.sleep(0.2)
            driver.set_script_timeout(20)
            yield driver
        finally:
            if driver is not None:
                with contextlib.suppress(Exception):
                    driver.quit()
            driver_proc.kill()
            driver_proc.wait(timeout=5)
            shutil.rmtree(profile, ignore_errors=True)

    # -- the link -----------------------------------------------------------------------------

    def shape_downlink(self, rate_kbit: int, burst_kbit: int = 32, latency_ms: int = 50) -> None:
        """Cap what reaches the namespace with a token bucket (changed live by calling again)."""
        _run(
            TC, "qdisc", "replace", "dev", self.host_iface, "root", "tbf",
            "rate", f"{rate_kbit}kbit", "burst", f"{burst_kbit}kbit", "latency", f"{latency_ms}ms",
        )  # fmt: skip

    def shape_uplink(self, rate_kbit: int, burst_kbit: int = 32, latency_ms: int = 50) -> None:
        """Cap what leaves the namespace."""
        self.exec(
            TC, "qdisc", "replace", "dev", self.ns_iface, "root", "tbf",
            "rate", f"{rate_kbit}kbit", "burst", f"{burst_kbit}kbit", "latency", f"{latency_ms}ms",
        )  # fmt: skip

    def outage(self) -> None:
        """Silently drop everything in both directions (a pfifo that holds nothing)."""
        _run(TC, "qdisc", "replace", "dev", self.host_iface, "root", "pfifo", "limit", "0")
        self.exec(TC, "qdisc", "replace", "dev", self.ns_iface, "root", "pfifo", "limit", "0")

    def block_udp(self) -> None:
        """Drop UDP in both directions, let everything else through (a UDP-blocking firewall)."""
        for prefix, iface in (([], self.host_iface), (self.argv(), self.ns_iface)):
            for command in _udp_block_commands(iface):
                _run(*prefix, *command)

    def clear(self) -> None:
        """Back to an unshaped, unblocked link in both directions."""
        _run(TC, "qdisc", "del", "dev", self.host_iface, "root", check=False)
        _run(*self.argv(TC, "qdisc", "del", "dev", self.ns_iface, "root"), check=False)


def _udp_block_commands(iface: str) -> list[list[str]]:
    """An htb root whose default class passes and whose UDP class ends in an empty pfifo."""
    return [
        [TC, "qdisc", "replace", "dev", iface, "root", "handle", "1:", "htb", "default", "10"],
        [TC, "class", "add", "dev", iface, "parent", "1:", "classid", "1:10",
         "htb", "rate", "10gbit"],
        [TC, "class", "add", "dev", iface, "parent", "1:", "classid", "1:20",
         "htb", "rate", "10gbit"],
        [TC, "qdisc", "add", "dev", iface, "parent", "1:20", "handle", "20:",
         "pfifo", "limit", "0"],
        [TC, "filter", "add", "dev", iface, "parent", "1:", "protocol", "ip", "prio", "1",
         "u32", "match", "ip", "protocol", "17", "0xff", "flowid", "1:20"],
    ]  # fmt: skip


class Lab:
    """Namespaces by name, and the root-namespace address the server should use."""

    def __init__(self, namespaces: dict[str, Namespace]) -> None:
        self.namespaces = namespaces
        first = next(iter(namespaces.values()))
        #: An address of the root namespace that every namespace reaches (bind the server here).
        self.server_address = first.gateway

    def __getitem__(self, name: str) -> Namespace:
        return self.namespaces[name]


@contextlib.contextmanager
def lab(names: Sequence[str]) -> Iterator[Lab]:
    """Namespaces for ``names`` on fresh subnets of 10.0.0.0/8, removed again on exit."""
    require_netns()
    if not names or len(names) > 250:
        raise ValueError("a lab has 1-250 namespaces")
    tag = _tag()
    octet2 = _free_second_octet()
    spaces = {name: Namespace(name, i, octet2, tag) for i, name in enumerate(names)}
    try:
        for space in spaces.values():
            space.create()
        yield Lab(spaces)
    finally:
        for space in spaces.values():
            space.destroy()


#: Host part of the first namespace's address on a :func:`lan` (the bridge has ``.1``).
LAN_FIRST_HOST = 10


class LanHost(Namespace):
    """A namespace on a :func:`lan`: its veth's host end is a port of the bridge, and its
    address is on the bridge's /24 (no default route: everything it talks to is on the LAN)."""

    def __init__(self, name: str, index: int, subnet: str, tag: str, bridge: str) -> None:
        super().__init__(name, index, 0, tag)
        self.bridge = bridge
        self.gateway = f"{subnet}.1"
        self.address = f"{subnet}.{LAN_FIRST_HOST + index}"

    def create(self) -> None:
        """Make the namespace, its veth pair (host end on the bridge), addressed and up."""
        _run(IP, "netns", "add", self.netns)
        _run(IP, "link", "add", self.host_iface, "type", "veth", "peer", "name", self.ns_iface)
        _run(IP, "link", "set", self.ns_iface, "netns", self.netns)
        _run(IP, "link", "set", self.host_iface, "master", self.bridge)
        _run(IP, "link", "set", self.host_iface, "up")
        self.exec(IP, "addr", "add", f"{self.address}/24", "dev", self.ns_iface)
        self.exec(IP, "link", "set", self.ns_iface, "up")
        self.exec(IP, "link", "set", "lo", "up")


class Lan:
    """The bridge, the root namespace's address on it, and the namespaces by name."""

    def __init__(self, bridge: str, address: str, hosts: dict[str, LanHost]) -> None:
        self.bridge = bridge
        #: The root namespace's address on the LAN (bind what the namespaces must reach here).
        self.address = address
        self.hosts = hosts

    def __getitem__(self, name: str) -> LanHost:
        return self.hosts[name]


@contextlib.contextmanager
def lan(names: Sequence[str]) -> Iterator[Lan]:
    """One namespace per name on a bridge with the root namespace, on a fresh 10.x.y.0/24;
    namespaces, veth pairs and bridge removed again (what ran inside killed) on exit."""
    require_netns()
    if not names or len(names) > 200:
        raise ValueError("a LAN has 1-200 namespaces")
    tag = _tag()
    bridge = f"sfub{tag}"
    subnet = f"10.{_free_second_octet()}.{random.randrange(256)}"
    hosts = {name: LanHost(name, i, subnet, tag, bridge) for i, name in enumerate(names)}
    try:
        _run(IP, "link", "add", bridge, "type", "bridge")
        _run(IP, "addr", "add", f"{subnet}.1/24", "dev", bridge)
        _run(IP, "link", "set", bridge, "up")
        for host in hosts.values():
            host.create()
        yield Lan(bridge, f"{subnet}.1", hosts)
    finally:
        for host in hosts.values():
            host.destroy()
        _run(IP, "link", "del", bridge, check=False)
