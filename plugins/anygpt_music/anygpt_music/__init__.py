"""AnyGPT plugin `anygpt-music`: music (EnCodec 32 kHz) and the reserved audio modality (24 kHz).

The codecs live in `anygpt_music.music` and `anygpt_music.audio`; importing this package is cheap.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
