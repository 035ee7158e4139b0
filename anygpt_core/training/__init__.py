"""Training: extend a base LLM with modality tokens, prepare token data, pretrain and fine-tune.

Heavy imports (torch, transformers) happen inside the functions, so importing this is cheap.
"""

from __future__ import annotations

from anygpt_core.training.config import TrainConfig, load_train_config
from anygpt_core.training.data import PrepareSummary, Skipped, merge_shards, prepare_dataset
from anygpt_core.training.extend import CHAT_TOKENS, ExtendResult, extend_model, tokens_for
from anygpt_core.training.train import TrainResult, train

__all__ = [
    "CHAT_TOKENS",
    "ExtendResult",
    "PrepareSummary",
    "Skipped",
    "TrainConfig",
    "TrainResult",
    "extend_model",
    "load_train_config",
    "merge_shards",
    "prepare_dataset",
    "tokens_for",
    "train",
]
