"""``python -m bench.replay_cost``: what replaying the data plane's log costs per record.

The compiled forwarder logs one record per packet it forwards; ``DataPlane.replay`` (every
50 ms in the server) hands them to the peers' receive bookkeeping (RTCP statistics, NACK and
TWCC state, meters, counters). This drives the unit tests' ingest harness
(``tests/unit/ingest_paths.py``: one VP8 simulcast + Opus publisher, ``--subscribers``
subscribers, the real Peer, DataPlane and forwarder), forwards ``--records`` packets per
batch through the forwarder (a meeting's 50 ms of one publisher: ~20) and times only
``DataPlane.replay``. Reported: microseconds of CPU per replayed record, median of
``--rounds`` rounds. Run it from a checkout to compare two commits (each measures its own
code); nothing here is timed in a test.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "unit"))

#: Simulated spacing of the packets (a 50 ms batch of ~20 packets).
PACKET_GAP_S = 0.0025


def measure(
    records: int, rounds: int, subscribers: int, batches: int, *, twcc_on: bool = True
) -> list[float]:
    """Microseconds of CPU per replayed record, one value per round."""
    from ingest_paths import (  # the harness lives with the unit tests
        AUDIO_SSRC,
        EXT_LEVEL,
        EXT_TWCC,
        OPUS_PT,
        PUB_ADDR,
        VIDEO_SSRCS,
        VP8_PT,
        PathWorld,
        rtp,
        vp8,
    )

    from sfu.core.kernels import compiled

    world = PathWorld("forwarder", compiled(), subs=subscribers)
    dataplane = world.dataplane
    assert dataplane is not None
    for sub in world.video_subs:
        assert sub.selector is not None
        sub.selector.set_target(0, None)
    forwarder = dataplane.forwarder
    seq, audio_seq, twcc, pid, now = 100, 200, 0, 1, 1.0
    out: list[float] = []
    for _ in range(rounds):
        spent = 0.0
        replayed = 0
        for _ in range(batches):
            wire = []
            for i in range(records):
                now += PACKET_GAP_S
                twcc = (twcc + 1) & 0xFFFF
                if i % 5 == 4:  # about one audio packet in five, as in the meeting
                    audio_seq += 1
                    packet = rtp(
                        AUDIO_SSRC,
                        audio_seq,
                        audio_seq * 960,
                        OPUS_PT,
                        b"\x05" * 60,
                        [(EXT_LEVEL, bytes([30]))],
                    )
                else:
                    seq += 1
                    pid += 1
                    packet = rtp(
                        VIDEO_SSRCS[0],
                        seq,
                        pid * 3000,
                        VP8_PT,
                        vp8(pid & 0x7FFF, key=pid == 2, size=1000),
                        [(EXT_TWCC, twcc.to_bytes(2, "big"))] if twcc_on else None,
                    )
                wire.append((world.client.protect_rtp(packet), PUB_ADDR))
            forwarder.process(wire, now)
            start = time.process_time()
            replayed += dataplane.replay()
            spent += time.process_time() - start
        out.append(spent / max(replayed, 1) * 1e6)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=20, help="records per replay")
    parser.add_argument("--batches", type=int, default=500, help="replays per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--subscribers", type=int, default=5)
    parser.add_argument(
        "--no-twcc", action="store_true", help="no transport-cc element (as the bench's clients)"
    )
    args = parser.parse_args()
    values = measure(
        args.records, args.rounds, args.subscribers, args.batches, twcc_on=not args.no_twcc
    )
    print(
        f"replay: {statistics.median(values):.2f} us of CPU per record (median of "
        f"{len(values)} rounds: {', '.join(f'{v:.2f}' for v in values)}), "
        f"{args.records} records per replay, {args.subscribers} subscribers, "
        f"transport-cc {'off' if args.no_twcc else 'on'}"
    )


if __name__ == "__main__":
    main()
