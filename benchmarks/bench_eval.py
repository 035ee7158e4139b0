"""`librispeech-asr` through the eval harness: samples/s one at a time against the engine's batching.

The model is AnyGPT-shaped and small (hidden 256, intermediate 688 as LLaMA-2-7B's ratio, 4 layers)
with the embedded demo's tokenizer and speech codec; the data are synthetic utterances in LibriSpeech's
test-clean layout. Both runs go through `Evaluation` with the local engine and the paper's text
decoding (beam search, 5 beams; `--tokens` caps the budget so a random model's answers end), one
with `--batch-size 1`, one with the engine's batching, in the same process; the answers are compared.
Target: >= 3x samples/s at batch 8.

Each setting runs `--repeat` times, the two alternating (1, 8, 1, 8, ...), and its best time counts
(as `timeit` advises): on a machine shared with other work, a burst of someone else's load during
one run then does not decide the ratio. Every run's answers are compared with the first's.

96 samples by default, twelve groups of 8: an evaluation answers thousands, and its pipeline's start
(the first group of 8 waits for its 8 inputs to be encoded, a group of 1 for one) and end are then
a small part of the time, as in a real run. With 32 samples they weigh about a tenth more.

It also prints the ceiling that this machine's kernels put on the ratio (`ceiling.py`): one
request's 5 beams against 8 requests' 40 rows, each step's body, vocabulary projection,
log-softmax and top-k timed bare, at the median length of the samples' prompts.

Usage: python benchmarks/bench_eval.py [--samples 96] [--batch 8] [--tokens 48] [--repeat 2] [--quick]
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf

logger = logging.getLogger("bench")


def write_data(root: Path, count: int) -> Path:
    """`count` utterances of 1-2.5 s (tones with noise) with transcripts, in LibriSpeech's layout."""
    chapter = root / "test-clean" / "1089" / "134686"
    chapter.mkdir(parents=True)
    rng = np.random.default_rng(0)
    words = [
        "he",
        "hoped",
        "there",
        "would",
        "be",
        "stew",
        "for",
        "dinner",
        "turnips",
        "and",
        "carrots",
        "and",
        "bruised",
        "potatoes",
    ]
    lines = []
    for i in range(count):
        seconds = 1.0 + 1.5 * rng.random()
        t = np.arange(int(seconds * 16000)) / 16000
        wave = 0.3 * np.sin(2 * np.pi * (150 + 10 * i) * t) + 0.02 * rng.standard_normal(t.shape)
        name = f"1089-134686-{i:04d}"
        sf.write(chapter / f"{name}.flac", wave.astype(np.float32), 16000)
        lines.append(f"{name} {' '.join(rng.choice(words, 6)).upper()}")
    (chapter / "1089-134686.trans.txt").write_text("\n".join(lines) + "\n")
    return root


def small_model(demo_dir: Path, target: Path) -> Path:
    """The demo's tokenizer files with an AnyGPT-shaped small LLaMA (seeded)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    target.mkdir(parents=True)
    for name in (
        "tokenizer.model",
        "added_tokens.json",
        "special_tokens_map.json",
        "tokenizer_config.json",
    ):
        shutil.copyfile(demo_dir / name, target / name)
    vocab = json.loads((demo_dir / "config.json").read_text())["vocab_size"]
    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=256,
        intermediate_size=688,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=4096,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(target, safe_serialization=True)
    return target


def evaluate(
    gpt: object, task: object, samples: list, out: Path, batch: int, tokens: int
) -> tuple[float, list[str]]:
    """Seconds to answer and score `samples` at `batch`, and the answers in sample order."""
    from anygpt_core.evaluation import Evaluation, LocalBackend

    gpt.engine.max_batch = batch  # type: ignore[attr-defined]
    evaluation = Evaluation(
        out,
        backend=LocalBackend(gpt, model="small"),  # type: ignore[arg-type]
        scorers=None,  # type: ignore[arg-type] - ASR scores the model's own text
        decode="model",
        overrides={"do_sample": False, "num_beams": 5, "max_new_tokens": tokens},
    )
    start = time.perf_counter()
    evaluation.run(task, samples)  # type: ignore[arg-type]
    seconds = time.perf_counter() - start
    rows = [
        json.loads(x) for x in (out / "librispeech-asr" / "samples.jsonl").read_text().splitlines()
    ]
    return seconds, [r["output"] for r in rows]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=96)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=48, help="text budget per answer")
    parser.add_argument("--repeat", type=int, default=2, help="runs per setting; the best counts")
    parser.add_argument("--quick", action="store_true", help="4 samples, 8 tokens, 1 run (a test)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    if args.quick:
        args.samples, args.tokens, args.repeat = 4, 8, 1

    import torch
    from ceiling import ceiling

    from anygpt_core.api import AnyGPT
    from anygpt_core.demo import ensure_demo
    from anygpt_core.evaluation import Evaluation
    from anygpt_core.plugins import discover

    torch.set_num_threads(max(1, torch.get_num_threads()))
    plugins = discover()
    demo = ensure_demo(plugins)
    task = plugins.eval_task("librispeech-asr")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        data = write_data(root / "LibriSpeech", args.samples)
        model = small_model(demo.model_dir, root / "model")
        gpt = AnyGPT.load(
            model, device="cpu", dtype="float32", plugins=plugins, codec_options=demo.options
        )
        samples = Evaluation(root / "x", backend=None, scorers=None).samples(task, data)  # type: ignore[arg-type]
        prompt = int(
            np.median([gpt.prepare(s.task).input_ids.shape[1] for s in samples])  # type: ignore[union-attr]
        )
        # warm-up: the codec loads and the first forward passes are not timed
        evaluate(gpt, task, samples[:1], root / "warm", 1, 2)
        times: dict[int, list[float]] = {1: [], args.batch: []}
        answers: list[list[str]] = []
        for run in range(args.repeat):
            for batch in times:
                out = root / f"run{run}-batch{batch}"
                seconds, said = evaluate(gpt, task, samples, out, batch, args.tokens)
                times[batch].append(seconds)
                answers.append(said)
        bound, alone, together = ceiling(
            gpt.generator.backend, [None] * args.batch, args.batch, prompt=prompt, beams=5
        )
    first = answers[0]
    same = min(sum(a == b for a, b in zip(first, said, strict=True)) for said in answers)
    n = len(samples)
    one, many = min(times[1]), min(times[args.batch])
    logger.info(
        "librispeech-asr, %d samples, 5 beams, <= %d tokens each, AnyGPT-shaped small model",
        n,
        args.tokens,
    )
    for batch, runs in times.items():
        shown = ", ".join(f"{t:.1f}" for t in runs)
        best = min(runs)
        logger.info("batch %d: %.2f samples/s (best of %s s)", batch, n / best, shown)
    logger.info("answers identical one by one and batched: %d/%d (every run)", same, n)
    logger.info("speed-up at batch %d: %.2fx (target >= 3x)", args.batch, one / many)
    logger.info(
        "ceiling on this machine at batch %d: %.2fx (a step of 5 beams %.2f ms, of %d rows %.2f "
        "ms; body, vocabulary projection, log-softmax and top-k timed bare, %d-token prompts)",
        args.batch,
        bound,
        alone,
        5 * args.batch,
        together,
        prompt,
    )


if __name__ == "__main__":
    main()
