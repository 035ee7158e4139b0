"""anygpt-sequence: an example third-party AnyGPT modality (numeric time series)."""

from __future__ import annotations

from anygpt_sequence.codec import SequenceCodec, fit_codebooks, read_series, save_checkpoint

__version__ = "0.1.0"

__all__ = ["SequenceCodec", "__version__", "fit_codebooks", "read_series", "save_checkpoint"]
