"""Which cluster member a node link is with, when a certificate names a node whose workers
are members each (``NodeLinks._member``): socket-free, on stand-in links."""

from __future__ import annotations

from typing import Any

from sfu.cluster.links import NodeLinks
from sfu.config import ClusterConfig
from sfu.transport.node_link import LinkUp


class StandInLink:
    """What NodeLinks reads of a NodeLink at LinkUp: the address, the peer, close()."""

    def __init__(self, address: tuple[str, int], peer: str) -> None:
        self.peer_address = address
        self.peer: str | None = peer
        self.closed: str | None = None

    def close(self, reason: str = "closed") -> None:
        self.closed = reason


def links_knowing(members: dict[tuple[str, int], str]) -> tuple[NodeLinks, list[str]]:
    links = NodeLinks("node-c.w0", ClusterConfig(), "127.0.0.1")
    links._members_at = dict(members)  # what update() resolved from the directory
    ups: list[str] = []
    links.on_link_up = lambda member, _link: ups.append(member)
    return links, ups


def up(links: NodeLinks, link: StandInLink) -> None:
    assert link.peer is not None
    event: Any = LinkUp(link.peer)
    links._event(link, event)  # type: ignore[arg-type]


def test_an_accepted_link_is_the_worker_at_its_address_of_the_certified_node() -> None:
    a0, a1 = ("127.0.0.1", 7000), ("127.0.0.1", 7001)
    links, ups = links_knowing({a0: "node-a.w0", a1: "node-a.w1", ("10.0.0.9", 7000): "node-z"})
    second = StandInLink(a1, "node-a")
    up(links, second)
    assert ups == ["node-a.w1"] and second.peer == "node-a.w1" and second.closed is None
    assert links.up == {"node-a.w1": second}
    # A single-process node's certificate names the member itself, wherever it comes from.
    alone = StandInLink(("10.9.9.9", 5), "node-z")
    up(links, alone)
    assert ups[-1] == "node-z" and alone.closed is None


def test_a_link_from_no_member_of_the_certified_node_is_refused() -> None:
    a0 = ("127.0.0.1", 7000)
    links, ups = links_knowing({a0: "node-a.w0"})
    # node-b's certificate from node-a.w0's address: it cannot stand for node-a's worker.
    forged = StandInLink(a0, "node-b")
    up(links, forged)
    # A member that registered after the last look at the directory: refused, redialled.
    unknown = StandInLink(("127.0.0.1", 7009), "node-a")
    up(links, unknown)
    assert ups == [] and links.up == {} and links.refused_unknown_member == 2
    assert forged.closed and unknown.closed and forged.peer is None


def test_a_dialled_member_must_be_of_the_certified_node() -> None:
    links, ups = links_knowing({})
    dialled = StandInLink(("127.0.0.1", 7001), "node-a")
    links._dialling["node-a.w1"] = dialled  # type: ignore[assignment]
    up(links, dialled)
    assert ups == ["node-a.w1"] and not links._dialling
    wrong = StandInLink(("127.0.0.1", 7002), "node-b")
    links._dialling["node-a.w2"] = wrong  # type: ignore[assignment]
    up(links, wrong)
    assert ups == ["node-a.w1"] and wrong.closed and links.refused_unknown_member == 1


def test_the_address_decides_before_the_name_and_a_dual_stack_address_is_mapped() -> None:
    """A node that ran as one process and now runs workers may still have its old lease
    (the id its certificate names): the worker at the link's address is the member. A
    dual-stack socket sees IPv4 peers as ``::ffff:a.b.c.d``."""
    a0, old = ("127.0.0.1", 7000), ("127.0.0.1", 6000)
    links, ups = links_knowing({a0: "node-a.w0", old: "node-a"})
    up(links, StandInLink(a0, "node-a"))
    up(links, StandInLink(("::ffff:127.0.0.1", 7001), "node-a"))  # no member there: by name
    mapped = StandInLink(("::ffff:127.0.0.1", 7000), "node-a")
    links_v6, ups_v6 = links_knowing({a0: "node-a.w0"})
    up(links_v6, mapped)
    assert ups == ["node-a.w0", "node-a"] and ups_v6 == ["node-a.w0"]
