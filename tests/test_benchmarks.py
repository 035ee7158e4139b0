"""The benchmark scripts run and check what they claim (ids identical); no timing is asserted."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).parents[1] / "benchmarks"


def run(script: str, *args: str) -> str:
    proc = subprocess.run(
        [sys.executable, str(BENCHMARKS / script), *args],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def test_gpu_benchmark_runs_on_the_cpu_at_tiny_size():
    out = run(
        "bench_gpu.py", "--device", "cpu", "--size", "tiny", "--tokens", "8", "--batch", "1,3"
    )
    assert "bandwidth bound" in out and "copy bandwidth" in out
    lines = [line for line in out.splitlines() if line.startswith("batch ")]
    assert len(lines) == 2 and all("identical ids" in line for line in lines)
    assert all("tokens/s" in line for line in lines)


def test_batching_driver_and_arrival_benchmarks_check_identical_ids():
    out = run("bench_generate.py", "--quick", "--only", "c,d,e")
    lines = out.splitlines()
    batches = [line for line in lines if line.startswith(("(c) static", "(c) continuous"))]
    assert len(batches) == 2 and all("identical ids" in line for line in batches)
    assert re.search(r"^\(c\) ceiling at batch  4: \d+\.\d+x \(a row's step", out, re.M)
    drivers = [line for line in lines if line.startswith("(d)")]
    assert len(drivers) == 2 and all("identical ids" in line for line in drivers)
    arrivals = [line for line in lines if line.startswith("(e)")]
    assert len(arrivals) == 3 and "identical ids" in arrivals[-1]


def test_serve_benchmark_runs_and_checks_identical_answers():
    out = run("bench_serve.py", "--requests", "3", "--tokens", "6", "--reps", "1")
    assert "answers identical one by one and together" in out
    assert "throughput ratio:" in out and "p95" in out
    assert re.search(r"one request: HTTP .* answers identical", out)
    assert re.search(r"ceiling on this machine at 3 together: \d+\.\d+x", out)


def test_tokenize_benchmark_checks_identical_ids():
    out = run("bench_tokenize.py", "--sizes", "3000,9000", "--reps", "1")
    assert "reference ids identical" in out
    assert re.search(r"9,000 .* \d+\.\d+x$", out, re.M)


def test_eval_benchmark_compares_batched_and_one_by_one_answers():
    out = run("bench_eval.py", "--quick")
    assert re.search(r"answers identical one by one and batched: \d+/4", out)
    assert re.search(r"speed-up at batch 8: \d+\.\d+x", out)
    assert re.search(r"ceiling on this machine at batch 8: \d+\.\d+x .* of 40 rows", out)


def test_run_benchmark_checks_identical_outputs_at_both_batch_sizes():
    out = run("bench_run.py", "--quick", "--codecs")
    assert "outputs identical at batch 1 and 8 (4 tasks, texts and files)" in out
    assert re.search(r"batch  8: .* decoding after generation \d+\.\d s", out)
    assert re.search(r"bound at batch 8: .* \d+\.\d+x at most$", out, re.M)
    assert re.search(r": \d+\.\d+x \(target >= 3x\)$", out, re.M)
    assert re.search(r"\(codecs\) SoundStorm .* logits (identical|different)", out)
    assert re.search(r"\(codecs\) unCLIP, 2 pictures: .* \d of 2 pictures differ", out)


def test_decode_batch_benchmark_reports_each_batch_size_for_both_models():
    out = run("bench_decode_batch.py", "--quick", "--batches", "1,3")
    for model in ("AnyGPT-shaped small model", "tiny LLaMA, int8"):
        rows = re.findall(rf"^{model}: batch +(\d+): .* tokens/s, +(\d+\.\d+)x batch 1$", out, re.M)
        assert [batch for batch, _ in rows] == ["1", "3"], out
        assert rows[0][1] == "1.00"


def test_prefix_benchmark_holds_the_same_chat_with_and_without_the_cache():
    out = run("bench_prefix.py", "--quick")
    assert "answers identical with and without the cache: 3/3" in out
    assert re.search(r"the cache supplied [1-9]\d* of \d+ prompt tokens", out)
    assert re.search(r"^last turn: \d+\.\d+x faster with the prefix cache$", out, re.M)
