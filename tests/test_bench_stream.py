"""benchmarks/bench_stream.py's smoke run: a short spoken answer, streamed and not, checked and timed.

Its /v1/realtime half starts a server (slow); tests/test_serve_stream.py covers that path."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("anygpt_speech")

BENCHMARK = Path(__file__).parents[1] / "benchmarks" / "bench_stream.py"


def test_stream_benchmark_quick_times_first_and_whole_audio():
    proc = subprocess.run(
        [sys.executable, str(BENCHMARK), "--quick"], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert "a 2 s spoken answer (100 codes)" in out and "vocabulary 49418" in out
    lines = [line for line in out.splitlines() if line.startswith("(a) Python API:")]
    assert len(lines) == 1, out
    timed = r"first audio \d+\.\d\d s, whole answer \d+\.\d\d s \(first/whole \d+%"
    assert all(re.search(timed, line) for line in lines), out
    assert re.search(r"^stages: generation \d+\.\d ms per code", out, re.M)
