"""The E2EE worker (sfu/web/e2ee-worker.js) under Node, checked against docs/e2ee.md.

Node runs the worker's transforms on synthetic frames (``e2ee_worker_harness.mjs``); this test
decrypts what it produced with the independent Python reference (:mod:`sframe_reference`) and
checks what it refused: frames without a key, other codecs, replays, tampering, truncation,
unencrypted frames, and key ids evicted from the ring. Skipped without ``node``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from cryptography.exceptions import InvalidTag
from sframe_reference import base_key, open_frame, parse_header

WEB = Path(__file__).resolve().parents[2] / "sfu" / "web"
HARNESS = Path(__file__).resolve().parent / "e2ee_worker_harness.mjs"
NODE = shutil.which("node")
ROOM = "unit"

KEYFRAME = bytes.fromhex("5003009d012a80026801") + bytes(range(200))  # 640x360, P bit 0
DELTAS = [bytes([0x31, 0x01, 0x00]) + os.urandom(40 + i) for i in range(9)]  # P bit 1
OPUS = [bytes([0x78]) + os.urandom(60), bytes([0x78]) + os.urandom(3)]
#: A delta frame never encrypted, whose bytes after the frame tag read as KID 0, CTR 0.
UNENCRYPTED = bytes([0x31, 0x01, 0x00, 0x00]) + bytes(40)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    if NODE is None:
        pytest.skip("node is not installed")
    tmp = tmp_path_factory.mktemp("e2ee")
    module = tmp / "e2ee.mjs"  # an ES module whatever Node's default module type is
    shutil.copy(WEB / "e2ee.js", module)
    env = dict(os.environ)
    env["PLAINTEXTS"] = json.dumps(
        {
            "video": [f.hex() for f in (KEYFRAME, *DELTAS)],
            "audio": [f.hex() for f in OPUS],
            "unencrypted": UNENCRYPTED.hex(),
        }
    )
    done = subprocess.run(
        [NODE, str(HARNESS), str(WEB / "e2ee-worker.js"), str(module)],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def test_nothing_is_sent_in_clear(run: dict[str, Any]) -> None:
    assert run["noKey"] == 0
    assert run["h264"] == 0
    assert run["afterSend"]["dropped"] == 2


def test_frames_follow_the_documented_format(run: dict[str, Any]) -> None:
    bases = {0: base_key("correct horse battery staple", ROOM)}
    video = [bytes.fromhex(h) for h in run["video"]]
    audio = [bytes.fromhex(h) for h in run["audio"]]
    opened = [open_frame(f, "video", bases) for f in video]
    assert [o.clear + o.plaintext for o in opened] == [KEYFRAME, *DELTAS]
    assert len(opened[0].clear) == 10 and all(len(o.clear) == 3 for o in opened[1:])
    # One sender id per track, key id 0, counters 0, 1, 2, ... across frames.
    assert [o.ctr for o in opened] == list(range(len(video)))
    assert {o.kid & 0xFF for o in opened} == {0} and len({o.kid for o in opened}) == 1
    # Headers: config byte, KID in as few bytes as it needs, CTR inline below 8, then 1 byte.
    kid_bytes = (opened[0].kid.bit_length() + 7) // 8
    sizes = [parse_header(f, len(o.clear))[2] for f, o in zip(video, opened, strict=True)]
    assert sizes == [1 + kid_bytes] * 8 + [2 + kid_bytes] * 2
    opened_audio = [open_frame(f, "audio", bases) for f in audio]
    assert [o.plaintext for o in opened_audio] == OPUS
    assert all(o.clear == b"" for o in opened_audio)  # not even the Opus TOC byte
    assert opened_audio[0].kid != opened[0].kid  # another track, another sender id
    # Audio and the TOC byte are encrypted: the frame does not start with it.
    assert audio[0][0] != OPUS[0][0] or audio[1][0] != OPUS[1][0]
    with pytest.raises(InvalidTag):
        open_frame(video[0], "video", {0: base_key("wrong", ROOM)})


def test_receivers_drop_what_does_not_authenticate(run: dict[str, Any]) -> None:
    # Every original frame comes back intact and in order, and the empty one as it was; the
    # rest is dropped and counted.
    assert [bytes.fromhex(h) for h in run["decrypted"]] == [KEYFRAME, *DELTAS, b""]
    stats = run["afterReceive"]
    assert stats["empty"] == 1
    assert [f["reason"] for f in stats["recentFailures"]] == ["auth", "malformed", "auth"]
    assert stats["decrypted"] == 1 + len(DELTAS)
    assert stats["replayed"] == 1
    assert stats["failed"] == 3  # tampered clear byte, truncated, unencrypted
    assert stats["failedNoKey"] == 0


def test_rotation_and_the_bounded_key_ring(run: dict[str, Any]) -> None:
    frame = bytes.fromhex(run["underKey1"])
    opened = open_frame(frame, "audio", {1: base_key("a new passphrase", ROOM)})
    assert opened.kid & 0xFF == 1 and opened.plaintext == OPUS[0]
    # Key ids 1-4 held: key id 0 was evicted, its frame is refused for want of a key.
    assert [bytes.fromhex(h) for h in run["afterEviction"]] == [OPUS[0]]
    final = run["final"]
    assert final["keyIds"] == [1, 2, 3, 4] and final["sendKeyId"] == 1
    assert final["failedNoKey"] == 1
    assert final["sentByKey"] == {"0": 1 + len(DELTAS) + len(OPUS), "1": 1}
