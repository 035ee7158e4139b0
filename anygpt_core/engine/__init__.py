"""The engine: the span rules and the drivers that run a model under them.

Layers, each importing only those above it:

- `events`: what every driver yields (`TokenEvent`, `SpanOpened`, `SpanClosed`, `Done`) and the
  `Request` of one sequence; `sampling`: choosing a token as a decoding config says.
- `constraint`: the span rules (`SpanConstraint`, `Row`): which ids are legal next, which
  config applies.
- `backends`: a transformers model as the loop sees it (KV cache, sliced output heads);
  `quantize`: int8 / int4 weight-only layers for it.
- `replay`: the events of ids another driver chose; `hf`: the rules as a transformers logits
  processor (`model.generate`, beam search); `loop`: the batched in-process `Generator`.
- `wire`: the rules and a request's row as JSON, for a vLLM server's processor.
- `base`: the `Engine` protocol; `batcher`: `LocalEngine`, which batches every caller's requests
  on one `Generator`; `vllm`: `VLLMEngine`, the same over a vLLM server's HTTP API.
- `threads`: `release()`, which a thread calls before it waits for another to compute, so its
  idle OpenMP helpers do not slow the one computing.

The package imports nothing itself, so `anygpt_core.engine.events` stays light (no torch).
"""
