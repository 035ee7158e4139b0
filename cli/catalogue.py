"""The project's own plugins by modality and flag, for "pip install" hints when one is missing.

A plugin that is installed declares everything about itself; this table only names the ones that
are not, so `anygpt run "text|speech|hi"` says what to install instead of "unknown modality".
"""

from __future__ import annotations

__all__ = ["KNOWN_EVAL_TASKS", "KNOWN_PLUGINS", "package_for_flag"]

#: Modality -> the distribution that provides it.
KNOWN_PLUGINS = {
    "image": "anygpt-image",
    "speech": "anygpt-speech",
    "music": "anygpt-music",
    "audio": "anygpt-music",
}

#: The paper's evaluation tasks -> the distribution that provides each.
KNOWN_EVAL_TASKS = {
    "coco-caption": "anygpt-image",
    "coco-t2i": "anygpt-image",
    "librispeech-asr": "anygpt-speech",
    "vctk-tts": "anygpt-speech",
    "musiccaps-t2m": "anygpt-music",
    "musiccaps-caption": "anygpt-music",
}

_FLAG_PREFIXES = {
    "--image-": "anygpt-image",
    "--speech-": "anygpt-speech",
    "--soundstorm-": "anygpt-speech",
    "--voice-prompt-": "anygpt-speech",
    "--music-": "anygpt-music",
    "--audio-": "anygpt-music",
}


def package_for_flag(flag: str) -> str | None:
    """The distribution of ours that adds a command-line flag, e.g. `--music-seconds`."""
    for prefix, package in _FLAG_PREFIXES.items():
        if flag.startswith(prefix):
            return package
    return None
