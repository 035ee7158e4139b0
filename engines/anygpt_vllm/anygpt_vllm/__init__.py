"""AnyGPT's span rules as a vLLM logits processor (`anygpt_vllm.processor`, which imports vLLM).

`anygpt_vllm.rules` holds the logic and imports no vLLM.
"""

from __future__ import annotations

from anygpt_vllm.rules import PAYLOAD_KEY, SpanRules

__all__ = ["PAYLOAD_KEY", "SpanRules"]
