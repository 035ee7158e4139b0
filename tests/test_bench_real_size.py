"""benchmarks/bench_real_size.py: its memory accounting, and its --quick run (no timing asserted)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import torch

SCRIPT = Path(__file__).parents[1] / "benchmarks" / "bench_real_size.py"


def load_bench():
    spec = importlib.util.spec_from_file_location("bench_real_size", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_peak_memory_sees_an_allocation_inside_the_block_and_forgets_it_after():
    bench = load_bench()
    memory = bench.PeakMemory(torch.device("cpu"))
    before = memory.rss()
    with memory.measure():
        block = torch.ones(64 * 2**20 // 4)  # 64 MiB, written: resident
        block.add_(1)
    assert memory.peak - before >= 60 * 2**20
    del block
    with memory.measure():
        pass
    assert memory.peak < before + 32 * 2**20


def test_random_quantized_llm_is_built_layer_by_layer():
    bench = load_bench()
    model = bench.build_llm(
        300, quick=True, device=torch.device("cpu"), dtype=torch.bfloat16, quantize="int4"
    )
    from anygpt_core.engine.quantize import QuantizedLinear

    assert sum(isinstance(m, QuantizedLinear) for m in model.modules()) == 14
    assert not any(t.is_meta for t in [*model.parameters(), *model.buffers()])
    assert model(torch.tensor([[1, 2, 3]])).logits.shape == (1, 3, 300)


def test_quick_run_measures_every_task_and_stage(tmp_path):
    out = tmp_path / "report.json"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--offload", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads(out.read_text())
    assert report["settings"]["size"] == "tiny" and report["settings"]["unclip_steps"] == 2
    stages = {(s["task"], s["stage"]) for s in report["stages"]}
    for task in ("text->image", "text->speech", "text->speech+voice", "text->music"):
        assert {(task, "prefill"), (task, "decode"), (task, "codec decode")} <= stages
    for task in ("image->text", "asr", "music->text"):
        assert {(task, "codec encode"), (task, "prefill"), (task, "decode")} <= stages
    assert ("(all)", "LLM load") in stages
    assert all(s["peak_gib"] > 0 and s["seconds"] >= 0 for s in report["stages"])
    decode = {s["task"]: s["tokens"] for s in report["stages"] if s["stage"] == "decode"}
    assert decode["text->image"] == 32 and decode["text->speech"] == 50  # fixed lengths
    assert decode["text->music"] == 100 and decode["asr"] == 7
    assert "spans [(1, 32)]" in proc.stdout and "| task | stage |" in proc.stdout
