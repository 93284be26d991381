"""The start-up self-check of announced addresses and socket buffers (operators' top pain).

Clients can only reach what the answer announces. :func:`address_warnings` says, before the
first client fails, when an announced address is not one of this host's (behind NAT or a
cloud's public IP that is not mapped 1:1, or a typo) and ``media.nat_mapping`` does not say
the mapping is intended, when the UDP socket listens on an address the announced ones cannot
reach, and when the kernel caps receive buffers (``net.core.rmem_max``) below what the media
socket asks for, which drops keyframe bursts under load.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import socket
from collections.abc import Callable, Sequence
from pathlib import Path

__all__ = ["address_warnings", "is_local_address", "read_rmem_max"]

RMEM_MAX_PATH = Path("/proc/sys/net/core/rmem_max")


def is_local_address(address: str) -> bool:
    """Whether ``address`` is assigned to an interface of this host (a bind test: no
    traffic, no lookup)."""
    ip = ipaddress.ip_address(address)
    family = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as probe:
        try:
            probe.bind((address, 0))
        except OSError as exc:
            return exc.errno != errno.EADDRNOTAVAIL
    return True


def read_rmem_max() -> int | None:
    """``net.core.rmem_max`` in bytes, or None where it cannot be read."""
    with contextlib.suppress(OSError, ValueError):
        return int(RMEM_MAX_PATH.read_text().strip())
    return None


def address_warnings(
    announced: Sequence[str],
    *,
    udp_host: str,
    nat_mapping: bool,
    wanted_buffer: int,
    rmem_max: int | None,
    is_local: Callable[[str], bool] = is_local_address,
) -> list[str]:
    """Warnings for the operator (empty when all is well); they name no client."""
    warnings: list[str] = []
    bind = ipaddress.ip_address(udp_host)
    for address in announced:
        ip = ipaddress.ip_address(address)
        if not nat_mapping and not is_local(address):
            warnings.append(
                f"announced address {address} is not an address of this host: clients will "
                f"fail to connect unless a 1:1 NAT forwards it here (then set "
                f"media.nat_mapping = true)"
            )
        if not bind.is_unspecified and ip != bind and not nat_mapping:
            warnings.append(
                f"announced address {address} differs from media.udp_host {udp_host}: the "
                f"media socket only receives on {udp_host}"
            )
        elif bind.is_unspecified and bind.version == 4 and ip.version == 6:
            warnings.append(
                f"announced address {address} is IPv6 but media.udp_host is {udp_host} "
                f"(IPv4 only): listen on '::' for both families"
            )
    if rmem_max is not None and rmem_max < wanted_buffer:
        warnings.append(
            f"net.core.rmem_max is {rmem_max} bytes, below the {wanted_buffer} the media "
            f"socket asks for: bursts will be dropped under load (sysctl -w "
            f"net.core.rmem_max={wanted_buffer})"
        )
    return warnings
