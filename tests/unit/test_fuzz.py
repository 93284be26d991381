"""The coverage-guided fuzz targets (``tests/fuzz/fuzz_rtp.py``) run briefly in every suite.

Each target starts from the corpus kept in the repository (``tests/fuzz/corpus/<target>``)
and runs a bounded number of inputs under a time cap; anything it finds that breaks an
invariant (an exception other than ParseError, compiled and reference disagreeing, a
malformed packet reaching a subscriber) fails the test with libFuzzer's report. New inputs go
to a temporary directory; ``make fuzz`` runs longer and grows the kept corpus.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

FUZZ = Path(__file__).resolve().parent.parent / "fuzz"
#: Inputs per target, and the wall-clock cap on each run (seconds): seconds in the suite.
RUNS: dict[str, int] = {"parse": 20000, "forward": 4000}
MAX_SECONDS = 30


@pytest.mark.parametrize("target", sorted(RUNS))
def test_fuzz_target_runs_clean(target: str, tmp_path: Path) -> None:
    corpus = FUZZ / "corpus" / target
    assert any(corpus.iterdir()), f"the kept corpus {corpus} is empty"
    result = subprocess.run(
        [
            sys.executable,
            str(FUZZ / "fuzz_rtp.py"),
            target,
            str(tmp_path),
            str(corpus),
            f"-runs={RUNS[target]}",
            f"-max_total_time={MAX_SECONDS}",
            f"-artifact_prefix={tmp_path}/",
            "-seed=1",
            # libFuzzer's RSS check reads ru_maxrss, which a child inherits from the process
            # that forked it (pytest, large late in a full run): it would fire at once.
            "-rss_limit_mb=0",
        ],
        capture_output=True,
        text=True,
        timeout=MAX_SECONDS + 60,
        env={**os.environ, "PYTHONHASHSEED": "0"},
        check=False,
    )
    tail = (result.stdout + result.stderr)[-4000:]
    assert result.returncode == 0, tail
    assert "Done" in tail, tail
