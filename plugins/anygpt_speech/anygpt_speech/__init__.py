"""AnyGPT speech plugin: SpeechTokenizer semantic codes, SoundStorm decoding, voice prompts.

Importing this package is cheap; torch and the models load inside the codec on first use.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
