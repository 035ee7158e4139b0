"""`AnyGPTLogitsProcessor`: the span rules inside vLLM, for the requests that ask for them.

Registered in the `vllm.logits_processors` entry-point group, so every `vllm serve` of an
environment where `anygpt-vllm` is installed loads it; it does nothing to a request unless that
request's `extra_args` (`vllm_xargs` over HTTP) holds our payload under `"anygpt"`, which
`anygpt_core.engine.vllm.VLLMEngine` sends. It changes the argmax (it masks), so vLLM runs it before its
own penalties, temperature, top-k and top-p; the gateway sets those to neutral values and the
processor applies the decoding config of each row's current state itself.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from vllm.v1.sample.logits_processor import BatchUpdate, LogitsProcessor
from vllm.v1.sample.logits_processor.builtin import process_dict_updates

from anygpt_core.errors import AnyGPTError
from anygpt_vllm.rules import SpanRules, Tracked

if TYPE_CHECKING:
    import torch
    from vllm import SamplingParams
    from vllm.config import VllmConfig

__all__ = ["TESTED_VLLM", "AnyGPTLogitsProcessor"]

logger = logging.getLogger(__name__)

#: The vLLM releases this processor is tested with (major, minor).
TESTED_VLLM = ((0, 32),)


class AnyGPTLogitsProcessor(LogitsProcessor):
    """vLLM's batch-level logits processor interface over `SpanRules`."""

    def __init__(self, vllm_config: VllmConfig, device: torch.device, is_pin_memory: bool) -> None:
        import vllm

        release = tuple(int(p) for p in vllm.__version__.split(".")[:2] if p.isdigit())
        if release not in TESTED_VLLM:
            logger.warning(
                "anygpt-vllm is tested with vLLM %s, not %s",
                ", ".join(f"{a}.{b}" for a, b in TESTED_VLLM),
                vllm.__version__,
            )
        self.rules = SpanRules(device)

    @classmethod
    def validate_params(cls, sampling_params: SamplingParams) -> None:
        """Refuse a request whose payload does not parse (vLLM answers it with HTTP 400)."""
        try:
            SpanRules(device="cpu").track(sampling_params.extra_args, None, [])
        except (AnyGPTError, ValueError) as err:
            raise ValueError(f"anygpt: {err}") from err

    def is_argmax_invariant(self) -> bool:
        """False: masking changes the argmax, so greedy requests see it too."""
        return False

    def update_state(self, batch_update: BatchUpdate | None) -> None:
        """Follow requests added to, removed from and moved within the persistent batch."""
        process_dict_updates(self.rules.rows, batch_update, self._new)

    def _new(
        self, params: SamplingParams, prompt: list[int] | None, output: list[int]
    ) -> Tracked | None:
        return self.rules.track(params.extra_args, prompt, output)

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        """Mask and warp the tracked rows of `logits` [batch, V]; other rows stay as they are."""
        if not self.rules.rows:
            return logits
        return self.rules.apply(logits)
