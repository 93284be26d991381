"""Two clustered nodes' configurations for tests: one Redis, a QUIC link each (free loopback
ports), certificates of one CA minted into a test's folder."""

from __future__ import annotations

import dataclasses
import socket
from pathlib import Path

from sfu.cluster.pki import mint_ca, mint_node_cert, write_pem
from sfu.config import ClusterConfig, Config

NODES = ("node-a", "node-b")


def free_udp_port() -> int:
    """A UDP port free on 127.0.0.1 now (the link binds it right after)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def node_configs(url: str, folder: Path, base: Config, secret: str) -> dict[str, Config]:
    """``base`` for each node of :data:`NODES`: the shared Redis at ``url``, the join token
    secret, a link each with its certificate (node A, the smaller id, dials B)."""
    ca_cert, ca_key = mint_ca("cluster test")
    (folder / "ca.pem").write_bytes(ca_cert)
    configs = {}
    for node in NODES:
        cert, key = mint_node_cert(ca_cert, ca_key, node)
        (folder / f"{node}.pem").write_bytes(cert)
        write_pem(folder / f"{node}.key", key, private=True)
        port = free_udp_port()
        configs[node] = dataclasses.replace(
            base,
            auth=dataclasses.replace(base.auth, jwt_secret=secret),
            cluster=ClusterConfig(
                redis_url=url,
                node_id=node,
                region="eu",
                advertise_address=f"127.0.0.1:{port}",
                link_port=port,
                ca_file=str(folder / "ca.pem"),
                cert_file=str(folder / f"{node}.pem"),
                key_file=str(folder / f"{node}.key"),
            ),
        )
    return configs


__all__ = ["NODES", "free_udp_port", "node_configs"]
