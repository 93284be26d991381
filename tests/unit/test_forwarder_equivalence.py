"""The compiled forwarder and its pure-Python reference give byte-identical egress.

Two worlds are built side by side from the same keys: one with the reference forwarder and
reference per-packet classes (``sfu.core.*``), one with the compiled forwarder and compiled
twins. Hypothesis drives both with the same sequence of SRTP datagrams (simulcast VP8 with
keyframes, temporal layers, reordering, duplicates, padding, corrupt and foreign datagrams;
Opus with audio levels) and control events (layer targets, subscriber preferences, pause,
hold, fan-out changes, relaying); after every step the slow-path datagrams, the egress
datagrams, the ingress log, the relay log and every subscription's state must be equal.
"""

from __future__ import annotations

from typing import Any

from forwarder_world import (
    AUDIO_SSRC,
    PROFILE,
    PUB_ADDR,
    PUB_KEY,
    PUB_SALT,
    SUB_KEY,
    SUB_SALT,
    SUBS,
    VIDEO_SSRCS,
    World,
    rtp,
    vp8_payload,
)
from hypothesis import given, settings
from hypothesis import strategies as st
from rtp_mutations import COMMON, VIDEO

from sfu._fastpath import _srtp_py
from sfu._fastpath._srtp_shared import SrtpError
from sfu._fastpath.values import refusal
from sfu.core.kernels import REFERENCE, Kernels

events = st.lists(
    st.one_of(
        st.tuples(
            st.just("video"),
            st.integers(0, 2),  # layer
            st.integers(-3, 4),  # sequence step (reorder, duplicate, gap)
            st.booleans(),  # keyframe
            st.booleans(),  # start of frame
            st.integers(0, 2),  # temporal id
            st.booleans(),  # layer sync
            st.integers(40, 1100),  # payload size
            st.integers(0, 3),  # padding only (0 = no)
        ),
        st.tuples(st.just("audio"), st.integers(-1, 3), st.integers(0, 127), st.booleans()),
        st.tuples(st.just("target"), st.integers(0, SUBS - 1), st.integers(-1, 2)),
        st.tuples(
            st.just("prefs"),
            st.integers(0, SUBS - 1),
            st.integers(-1, 2),
            st.integers(-1, 2),
            st.booleans(),
        ),
        st.tuples(st.just("hold"), st.integers(0, SUBS - 1), st.booleans()),
        st.tuples(st.just("impair"), st.integers(0, SUBS - 1), st.integers(0, 4)),
        # An egress pacer on a subscriber transport (its media queued, released by rate).
        st.tuples(st.just("pace"), st.integers(0, SUBS - 1), st.floats(0.0, 3e6)),
        st.tuples(st.just("fanout"), st.lists(st.integers(0, SUBS - 1), max_size=SUBS)),
        # A pipe relays the publication of stream 0-3 (the forwarder logs its packets).
        st.tuples(st.just("relay"), st.integers(0, 3), st.booleans()),
        # A subscriber transport without SRTP keys (issue 18): its routes are left untouched.
        st.tuples(st.just("keys"), st.integers(0, SUBS - 1), st.booleans()),
        st.tuples(st.just("junk"), st.binary(min_size=0, max_size=40), st.booleans()),
        st.tuples(st.just("tamper"), st.integers(0, 2)),
        # A malformed packet inside SRTP (rtp_mutations): refused alike, with its reason.
        st.tuples(st.just("mutate"), st.sampled_from(sorted(VIDEO)), st.integers(0, 3)),
    ),
    min_size=1,
    max_size=80,
)


@settings(max_examples=150, deadline=None)
@given(events=events)
def test_compiled_forwarder_matches_reference(
    compiled_kernels: Kernels, events: list[tuple[Any, ...]]
) -> None:
    _drive(compiled_kernels, events, source=False)


@settings(max_examples=100, deadline=None)
@given(events=events)
def test_compiled_ingest_of_a_plaintext_source_matches_reference(
    compiled_kernels: Kernels, events: list[tuple[Any, ...]]
) -> None:
    """The same, with the publisher a plaintext source (a relay pipe's far end): its packets,
    junk included, enter decrypted through ``ingest`` instead of SRTP through ``process``."""
    _drive(compiled_kernels, events, source=True)


def _drive(compiled_kernels: Kernels, events: list[tuple[Any, ...]], *, source: bool) -> None:
    ref, comp = World(REFERENCE, source=source), World(compiled_kernels, source=source)
    # What the publisher's browser would send: one client context encrypts for both.
    client = _srtp_py.SrtpContext(PROFILE, PUB_KEY, PUB_SALT, outbound=True)
    seqs = [100, 40000, 65530]
    pid, tl0, audio_seq, twcc = 300, 7, 65534, 0
    keyed = set(range(SUBS))
    pacers: dict[int, tuple[Any, Any]] = {}
    now = 10.0
    for event in events:
        now += 0.003
        datagrams: list[tuple[bytes, tuple[str, int]]] = []
        plains: list[bytes] = []  # what a source's ingest takes instead
        kind = event[0]
        if kind == "video":
            _, layer, step, key, start, tid, sync, size, padding = event
            seqs[layer] = (seqs[layer] + step) & 0xFFFF
            pid = (pid + (1 if start else 0)) & 0x7FFF
            tl0 = (tl0 + (1 if start and tid == 0 else 0)) & 0xFF
            twcc += 1
            ext = bytes([0x10, ord("0"), 0x31, twcc >> 8 & 0xFF, twcc & 0xFF, 0x42, 1, 2, 3])
            payload = b"" if padding else vp8_payload(pid, tl0, tid, sync, key, start, size)
            plain = rtp(
                VIDEO_SSRCS[layer], seqs[layer], int(now * 90000), 96, payload, ext, padding
            )
            plains.append(plain)
            datagrams.append((client.protect_rtp(plain), PUB_ADDR))
        elif kind == "audio":
            _, step, level, vad = event
            audio_seq = (audio_seq + step) & 0xFFFF
            ext = bytes([0x50, (0x80 if vad else 0) | level])
            plain = rtp(AUDIO_SSRC, audio_seq, int(now * 48000), 111, bytes(60), ext)
            plains.append(plain)
            datagrams.append((client.protect_rtp(plain), PUB_ADDR))
        elif kind == "junk":
            _, data, known = event
            plains.append(data)
            datagrams.append((data, PUB_ADDR if known else ("127.0.0.1", 7777)))
        elif kind == "mutate":
            _, name, which = event
            mutate = VIDEO[name][0]
            if which < 3:
                seqs[which] = (seqs[which] + 1) & 0xFFFF
                plain = mutate(
                    VIDEO_SSRCS[which],
                    seqs[which],
                    int(now * 90000),
                    96,
                    vp8_payload(pid, tl0, 0, True, False, True, 30),
                    bytes([0x10, ord("0")]),
                )
            else:
                audio_seq = (audio_seq + 1) & 0xFFFF
                plain = mutate(AUDIO_SSRC, audio_seq, int(now * 48000), 111, bytes(20), b"")
            plains.append(plain)
            try:
                datagrams.append((client.protect_rtp(plain), PUB_ADDR))
            except SrtpError:
                if not source:
                    continue  # a header libsrtp will not protect never arrives inside SRTP
        elif kind == "tamper":
            plain = rtp(VIDEO_SSRCS[event[1]], seqs[event[1]] + 1, 0, 96, bytes(50), b"")
            wire = bytearray(client.protect_rtp(plain))
            wire[-1] ^= 1
            datagrams.append((bytes(wire), PUB_ADDR))
        for world in (ref, comp):
            if kind == "target":
                _, index, layer = event
                world.video_subs[index].selector.set_target(None if layer < 0 else layer, None)
            elif kind == "prefs":
                _, index, top, temporal, paused = event
                for sub in (world.video_subs[index], world.audio_subs[index]):
                    sub.set_preferences(
                        None if top < 0 else top, None if temporal < 0 else temporal, paused
                    )
            elif kind == "hold":
                world.video_subs[event[1]].set_held(event[2])
                world.audio_subs[event[1]].set_held(event[2])
            elif kind == "impair":
                if event[1] in keyed:
                    world.forwarder.set_impairment(event[1] + 1, event[2])
            elif kind == "pace":
                if event[1] in keyed:
                    index = event[1]
                    if index not in pacers:
                        pacers[index] = (REFERENCE.Pacer(), compiled_kernels.Pacer())
                    pacer = pacers[index][0 if world is ref else 1]
                    pacer.set_rate(event[2], now)
                    world.forwarder.set_pacer(index + 1, pacer, world.histories[index])
            elif kind == "keys":
                world.set_keyed(event[1], event[2])
            elif kind == "relay":
                world.forwarder.set_relay(event[1], event[2])
            elif kind == "fanout":
                world.video_fanout = sorted(set(event[1]))
                world.audio_fanout = sorted(set(event[1]))
                world.push_routes()
        if kind == "keys":
            (keyed.add if event[2] else keyed.discard)(event[1])
            if not event[2]:
                pacers.pop(event[1], None)  # unregistered: the forwarder forgot the pacer
        if source:
            if not plains:
                continue
            entries = [(0, plain) for plain in plains]
            ref_in, ref_egress = ref.forwarder.ingest(entries, now)
            comp_in, comp_egress = comp.forwarder.ingest(entries, now)
            assert comp_in == ref_in
        else:
            if not datagrams:
                continue
            ref_slow, ref_egress = ref.forwarder.process(datagrams, now)
            comp_slow, comp_egress = comp.forwarder.process(datagrams, now)
            assert comp_slow == ref_slow
        assert comp_egress == ref_egress
        log = ref.forwarder.drain_log()
        assert comp.forwarder.drain_log() == log
        assert comp.snapshot() == ref.snapshot()
        assert comp.forwarder.impaired_drops == ref.forwarder.impaired_drops
        assert comp.forwarder.paced_backlog() == ref.forwarder.paced_backlog()
        assert comp.forwarder.paced_due == ref.forwarder.paced_due
        assert comp.forwarder.paced_packets == ref.forwarder.paced_packets
        assert comp.forwarder.drain_relay() == ref.forwarder.drain_relay()
        for index, (ref_pacer, comp_pacer) in sorted(pacers.items()):
            released = ref_pacer.pop(now, ref.histories[index])
            assert comp_pacer.pop(now, comp.histories[index]) == released
            assert comp_pacer.next_deadline(now) == ref_pacer.next_deadline(now)
        if kind == "mutate" and (event[2] < 3 or event[1] in COMMON) and log:
            # Refused under its reason, forwarded to nobody (unless SRTP refused it first as
            # a replay: an earlier packet had that sequence number, and there is no record).
            assert [(refusal(r[1]), r[8]) for r in log] == [(VIDEO[event[1]][1], 0)]


def test_every_kind_of_datagram_is_exercised(compiled_kernels: Kernels) -> None:
    """A fixed run: media is forwarded (fast), the rest goes up (slow), and both agree."""
    ref, comp = World(REFERENCE), World(compiled_kernels)
    client = _srtp_py.SrtpContext(PROFILE, PUB_KEY, PUB_SALT, outbound=True)
    datagrams = []
    for i in range(30):
        for ssrc in VIDEO_SSRCS:
            payload = vp8_payload(10 + i, i, i % 2, True, i == 0, True, 900)
            plain = rtp(ssrc, 100 + i, 3000 * i, 96, payload, bytes([0x10, ord("0")]))
            datagrams.append((client.protect_rtp(plain), PUB_ADDR))
    datagrams.append((b"\x00\x01\x00\x00" + bytes(16), PUB_ADDR))  # STUN
    datagrams.append((bytes([0x80, 200]) + bytes(30), PUB_ADDR))  # RTCP
    for world in (ref, comp):
        for sub in world.video_subs:
            sub.selector.set_target(2, None)
    ref_slow, ref_egress = ref.forwarder.process(datagrams, 1.0)
    comp_slow, comp_egress = comp.forwarder.process(datagrams, 1.0)
    assert len(ref_slow) == 2 and comp_slow == ref_slow
    # The first keyframes climb 0 -> 1 -> 2 (one packet each), then layer 2 to everyone.
    assert len(ref_egress) == (2 + 30) * SUBS and comp_egress == ref_egress
    assert comp.forwarder.fast_packets == ref.forwarder.fast_packets == 90
    assert comp.snapshot() == ref.snapshot()


def test_padding_only_packets_agree(compiled_kernels: Kernels) -> None:
    """A fixed run the random one rarely reaches: padding-only packets on the layer a route
    forwards and on one it does not, between media, so each route's munger must account for
    them (or not) as the reference does."""
    ref, comp = World(REFERENCE), World(compiled_kernels)
    client = _srtp_py.SrtpContext(PROFILE, PUB_KEY, PUB_SALT, outbound=True)
    for world in (ref, comp):
        world.video_subs[0].selector.set_target(0, None)
        world.video_subs[1].selector.set_target(1, None)
    ext = bytes([0x10, ord("0")])
    now = 1.0
    for i in range(12):
        datagrams = []
        for ssrc in VIDEO_SSRCS:
            padding = 8 if i % 3 == 2 else 0
            payload = b"" if padding else vp8_payload(20 + i, i, 0, True, i == 0, True, 400)
            plain = rtp(ssrc, 500 + i, 3000 * i, 96, payload, ext, padding)
            datagrams.append((client.protect_rtp(plain), PUB_ADDR))
        now += 0.01
        ref_slow, ref_egress = ref.forwarder.process(datagrams, now)
        comp_slow, comp_egress = comp.forwarder.process(datagrams, now)
        assert comp_slow == ref_slow == []
        assert comp_egress == ref_egress
        assert comp.forwarder.drain_log() == ref.forwarder.drain_log()
        assert comp.snapshot() == ref.snapshot()
    skipped = [sub.munger.skipped for sub in comp.video_subs]
    assert skipped == [sub.munger.skipped for sub in ref.video_subs] and skipped[0] > 0


def test_egress_stamped_with_each_transports_sequence(compiled_kernels: Kernels) -> None:
    """Every forwarded packet carrying the publisher's transport-cc element leaves with the
    subscriber transport's own next sequence number (under the subscriber's id) and lands in
    that transport's send history; a subscriber without transport-cc gets no stamp."""
    ref, comp = World(REFERENCE), World(compiled_kernels)
    client = _srtp_py.SrtpContext(PROFILE, PUB_KEY, PUB_SALT, outbound=True)
    for world in (ref, comp):
        for sub in world.video_subs:
            sub.selector.set_target(0, None)
    datagrams = []
    for i in range(20):
        payload = vp8_payload(10 + i, i, 0, True, i == 0, True, 500)
        ext = bytes([0x31, 0x77, i])  # the publisher's transport-cc: id 3, its own sequence
        plain = rtp(VIDEO_SSRCS[0], 100 + i, 3000 * i, 96, payload, ext)
        datagrams.append((client.protect_rtp(plain), PUB_ADDR))
    ref_slow, ref_egress = ref.forwarder.process(datagrams, 2.0)
    comp_slow, comp_egress = comp.forwarder.process(datagrams, 2.0)
    assert comp_slow == ref_slow == []
    assert comp_egress == ref_egress and len(ref_egress) == 20 * SUBS
    assert comp.snapshot() == ref.snapshot()
    for world in (ref, comp):
        stamped = world.histories[: SUBS - 1]
        assert [h.packets for h in stamped] == [20] * (SUBS - 1)
        assert world.histories[-1].packets == 0
        assert stamped[0].lookup(19) is not None and stamped[0].lookup(19)[0] == 2.0
    # Decrypt what subscriber 0 got: sequence numbers 0..19 under its id (10).
    sub_in = _srtp_py.SrtpContext(PROFILE, SUB_KEY, SUB_SALT, outbound=False)
    got = []
    for wire, address in ref_egress:
        if address == ("127.0.0.1", 6000):
            plain = sub_in.unprotect_rtp(wire)
            assert plain[16] == (10 << 4) | 1
            got.append((plain[17] << 8) | plain[18])
    assert got == list(range(20))


def test_the_relay_log_is_bounded_alike(compiled_kernels: Kernels) -> None:
    """A relayed stream's packets wait in a bounded log (1024) until drained; the rest are
    counted, not held, in both implementations."""
    ref, comp = World(REFERENCE), World(compiled_kernels)
    client = _srtp_py.SrtpContext(PROFILE, PUB_KEY, PUB_SALT, outbound=True)
    datagrams = []
    for i in range(1100):
        payload = vp8_payload(10 + i, i & 0xFF, 0, True, i == 0, True, 100)
        plain = rtp(VIDEO_SSRCS[0], i, 3000 * i, 96, payload, bytes([0x10, ord("0")]))
        datagrams.append((client.protect_rtp(plain), PUB_ADDR))
    logs = []
    for world in (ref, comp):
        world.forwarder.set_relay(0, True)
        world.forwarder.process(datagrams[:600], 1.0)
        world.forwarder.process(datagrams[600:], 1.1)
        logs.append(world.forwarder.drain_relay())
        assert world.forwarder.relay_overflow == 1100 - 1024
        assert world.forwarder.drain_relay() == []
    assert logs[0] == logs[1]
    assert len(logs[0]) == 1024
    assert all(handle == 0 and done == 0 for handle, _, done in logs[0])
