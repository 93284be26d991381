"""The browser client's codec order: what the room announces (``joined.codecs``) first, codecs
the room cannot forward left out, retransmission and FEC formats kept after them."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

WEB = Path(__file__).resolve().parents[2] / "sfu" / "web"
NODE = shutil.which("node")

#: Chromium's video capabilities, abridged (mimeType and fmtp line), in its own order.
CAPS = [
    ("video/VP8", ""),
    ("video/rtx", ""),
    ("video/H264", "packetization-mode=1;profile-level-id=42001f"),
    ("video/H264", "packetization-mode=1;profile-level-id=42e01f"),
    ("video/AV1", "profile=0"),
    ("video/VP9", "profile-id=0"),
    ("video/red", ""),
    ("video/ulpfec", ""),
]


def _order(tmp_path: Path, announced: object) -> list[list[str]]:
    if NODE is None:
        pytest.skip("node is not installed")
    for name in ("sfu-client.js", "e2ee.js"):  # ES modules whatever Node's default type is
        shutil.copy(WEB / name, tmp_path / name.replace(".js", ".mjs"))
    client = tmp_path / "sfu-client.mjs"
    client.write_text(client.read_text().replace('"./e2ee.js"', '"./e2ee.mjs"'))
    caps = json.dumps([{"mimeType": m, "sdpFmtpLine": f} for m, f in CAPS])
    script = (
        f"import {{ roomCodecOrder }} from {json.dumps(str(client))};"
        f"const out = roomCodecOrder({caps}, {json.dumps(announced)});"
        "console.log(JSON.stringify(out.map((c) => [c.mimeType, c.sdpFmtpLine])));"
    )
    done = subprocess.run(
        [NODE, "--input-type=module", "-e", script],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    result: list[list[str]] = json.loads(done.stdout)
    return result


def test_room_order_first_unforwardable_left_out(tmp_path: Path) -> None:
    out = _order(tmp_path, ["H264", "VP8", "VP9"])
    assert [m for m, _ in out] == [
        "video/H264",
        "video/H264",
        "video/VP8",
        "video/VP9",
        "video/rtx",
        "video/red",
        "video/ulpfec",
    ]
    # The browser's own order within one codec (its H.264 profiles) is kept.
    assert [f for m, f in out if m == "video/H264"] == [CAPS[2][1], CAPS[3][1]]


def test_without_an_announced_list_vp8_comes_first_and_nothing_is_dropped(
    tmp_path: Path,
) -> None:
    out = _order(tmp_path, None)
    assert [m for m, _ in out] == ["video/VP8"] + [m for m, _ in CAPS if m != "video/VP8"]
