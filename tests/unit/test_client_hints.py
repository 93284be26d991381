"""The browser client's tile-size hint: which simulcast layer a tile of a given height needs."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

WEB = Path(__file__).resolve().parents[2] / "sfu" / "web"
NODE = shutil.which("node")

#: (visible height in device pixels, layers, top layer height) -> max_spatial (None: no cap).
CASES = [
    (90, 3, 720, 0),
    (180, 3, 720, 0),
    (206, 3, 720, 0),  # a 180-line layer serves a tile up to 15% taller
    (208, 3, 720, 1),
    (400, 3, 720, 1),
    (415, 3, 720, None),
    (720, 3, 720, None),
    (1080, 3, 720, None),
    (200, 2, 720, 0),
    (500, 2, 720, None),
    (500, 3, 1080, 1),
    (0, 3, 720, 0),
]


def test_tile_heights_map_to_layers(tmp_path: Path) -> None:
    if NODE is None:
        pytest.skip("node is not installed")
    for name in ("sfu-client.js", "e2ee.js"):  # ES modules whatever Node's default type is
        shutil.copy(WEB / name, tmp_path / name.replace(".js", ".mjs"))
    client = tmp_path / "sfu-client.mjs"
    client.write_text(client.read_text().replace('"./e2ee.js"', '"./e2ee.mjs"'))
    cases = json.dumps([c[:3] for c in CASES])
    script = (
        f"import {{ layerForHeight }} from {json.dumps(str(client))};"
        f"console.log(JSON.stringify({cases}.map(([h, n, top]) => layerForHeight(h, n, top))));"
    )
    done = subprocess.run(
        [NODE, "--input-type=module", "-e", script],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == [c[3] for c in CASES]
