"""The namespace lab itself: reachability, UDP blocking, outages, cleanup, Chromium inside."""

from __future__ import annotations

import http.server
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator

import netns
import pytest

pytestmark = pytest.mark.integration

# Sends one datagram and one TCP connection attempt from inside a namespace to HOST:PORT and
# prints what got through ("udp" when the server echoed, "tcp" when the connect succeeded).
PROBE = """
import socket, sys
host, port = sys.argv[1], int(sys.argv[2])
got = []
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
u.settimeout(0.5)
u.sendto(b"ping", (host, port))
try:
    if u.recv(64) == b"ping":
        got.append("udp")
except OSError:
    pass
try:
    socket.create_connection((host, port), timeout=0.5).close()
    got.append("tcp")
except OSError:
    pass
print(",".join(got))
"""


@pytest.fixture
def two_hosts() -> Iterator[netns.Lab]:
    with netns.lab(["a", "b"]) as hosts:
        yield hosts


def _echo_servers(address: str) -> tuple[int, socket.socket, socket.socket]:
    """A UDP echo and a TCP listener on the same port of ``address`` (root namespace)."""
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind((address, 0))
    port = udp.getsockname()[1]
    tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    tcp.bind((address, port))
    tcp.listen(8)

    def echo() -> None:
        while True:
            try:
                data, peer = udp.recvfrom(64)
            except OSError:
                return
            udp.sendto(data, peer)

    threading.Thread(target=echo, daemon=True).start()
    return port, udp, tcp


def _probe(space: netns.Namespace, host: str, port: int) -> set[str]:
    out = space.exec(sys.executable, "-c", PROBE, host, str(port)).stdout.strip()
    return set(filter(None, out.split(",")))


def test_every_namespace_reaches_the_server_address_and_blocks_apply(
    two_hosts: netns.Lab,
) -> None:
    port, udp, tcp = _echo_servers(two_hosts.server_address)
    try:
        a, b = two_hosts["a"], two_hosts["b"]
        assert _probe(a, two_hosts.server_address, port) == {"udp", "tcp"}
        # b reaches the server's address through its own link and default route.
        assert _probe(b, two_hosts.server_address, port) == {"udp", "tcp"}
        b.block_udp()
        assert _probe(b, two_hosts.server_address, port) == {"tcp"}
        assert _probe(a, two_hosts.server_address, port) == {"udp", "tcp"}
        b.clear()
        b.outage()
        assert _probe(b, two_hosts.server_address, port) == set()
        b.clear()
        b.shape_downlink(400)
        qdisc = subprocess.run(
            [netns.TC, "qdisc", "show", "dev", b.host_iface], capture_output=True, text=True
        ).stdout
        assert "tbf" in qdisc and "400Kbit" in qdisc
        assert _probe(b, two_hosts.server_address, port) == {"udp", "tcp"}
    finally:
        udp.close()
        tcp.close()


def test_the_lab_removes_its_namespaces_and_links() -> None:
    with netns.lab(["x"]) as hosts:
        space = hosts["x"]
        holder = space.popen(["sleep", "30"])
        listed = subprocess.run([netns.IP, "netns", "list"], capture_output=True, text=True)
        assert space.netns in listed.stdout
    assert holder.wait(timeout=5) != 0  # killed, not finished
    listed = subprocess.run([netns.IP, "netns", "list"], capture_output=True, text=True)
    assert space.netns not in listed.stdout
    links = subprocess.run([netns.IP, "link", "show"], capture_output=True, text=True)
    assert space.host_iface not in links.stdout


def test_chromium_inside_a_namespace_loads_a_page_from_the_root_namespace(
    two_hosts: netns.Lab,
) -> None:
    server = http.server.ThreadingHTTPServer(
        (two_hosts.server_address, 0), http.server.SimpleHTTPRequestHandler
    )
    threading.Thread(target=server.serve_forever, daemon=True).start()
    origin = f"http://{two_hosts.server_address}:{server.server_address[1]}"
    try:
        flag = f"--unsafely-treat-insecure-origin-as-secure={origin}"
        with two_hosts["a"].chromium((flag,)) as driver:
            driver.get(origin + "/")
            assert driver.execute_script("return location.host") == origin[len("http://") :]
            # The flag makes the page a secure context, so media capture is available.
            assert driver.execute_script("return !!navigator.mediaDevices") is True
    finally:
        server.shutdown()
        server.server_close()
