"""The start-up self-check of announced addresses and buffers (pure; the bind test of
is_local_address uses no traffic)."""

from __future__ import annotations

from sfu.io.address_check import address_warnings, is_local_address

MIB = 1024 * 1024


def _warnings(announced: tuple[str, ...], **kwargs: object) -> list[str]:
    options: dict[str, object] = {
        "udp_host": "0.0.0.0",
        "nat_mapping": False,
        "wanted_buffer": 4 * MIB,
        "rmem_max": 8 * MIB,
        "is_local": lambda address: address.startswith("10."),
    }
    options.update(kwargs)
    return address_warnings(announced, **options)  # type: ignore[arg-type]


def test_local_addresses_and_big_buffers_need_no_warning() -> None:
    assert _warnings(("10.0.0.5",)) == []


def test_a_foreign_address_warns_unless_a_nat_mapping_is_configured() -> None:
    (warning,) = _warnings(("203.0.113.5",))
    assert "203.0.113.5 is not an address of this host" in warning
    assert "media.nat_mapping" in warning
    assert _warnings(("203.0.113.5",), nat_mapping=True) == []


def test_small_rmem_max_warns_with_the_fix() -> None:
    (warning,) = _warnings(("10.0.0.5",), rmem_max=212992)
    assert "net.core.rmem_max is 212992" in warning and "sysctl -w" in warning
    assert _warnings(("10.0.0.5",), rmem_max=None) == []


def test_ipv6_announced_on_an_ipv4_socket_warns() -> None:
    warnings = _warnings(("10.0.0.5", "fd00::5"), is_local=lambda _a: True)
    assert len(warnings) == 1 and "listen on '::'" in warnings[0]
    assert _warnings(("10.0.0.5", "fd00::5"), udp_host="::", is_local=lambda _a: True) == []


def test_announcing_another_address_than_the_bound_one_warns() -> None:
    warnings = _warnings(("10.0.0.6",), udp_host="10.0.0.5")
    assert any("differs from media.udp_host" in w for w in warnings)


def test_is_local_address_by_bind() -> None:
    assert is_local_address("127.0.0.1")
    assert not is_local_address("192.0.2.123")  # TEST-NET-1 is never assigned here
