"""Prompt phrasings of the sequence modality, in the reference's other2text / text2other roles."""

from __future__ import annotations

__all__ = ["FROM_TEXT", "TO_TEXT"]

#: Ask the model to describe a series (other2text).
TO_TEXT = (
    "Describe the shape of this series.",
    "What trend does this sequence show?",
    "Summarise this time series in a sentence.",
    "Explain what happens in this signal.",
    "Give a short caption for this series.",
)

#: Ask the model to write a series from a description (text2other).
FROM_TEXT = (
    "Generate a series that matches this description.",
    "Draw this description as a time series.",
    "Write a sequence of values that fits this caption.",
    "Turn this text into a signal.",
    "Produce a time series described by this text.",
)
