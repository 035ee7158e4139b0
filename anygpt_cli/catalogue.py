"""The project's own plugins by modality and flag, for "pip install" hints when one is missing.

A plugin that is installed declares everything about itself; this table only names the ones that
are not, so `anygpt run "text|speech|hi"` says what to install instead of "unknown modality".
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["KNOWN_EVAL_TASKS", "KNOWN_PLUGINS", "install_target", "package_for_flag"]

#: The checkout this CLI runs from when it is installed from one (`pip install -e .`).
_CHECKOUT = Path(__file__).resolve().parents[1]


def install_target(distribution: str) -> str:
    """What `pip install` takes for one of our plugins: its folder here, else its name.

    "Here" is the checkout the CLI runs from (an editable install); our plugins are not on the
    package index, so their folder is what a user can install.
    """
    folder = _CHECKOUT / "plugins" / distribution.replace("-", "_")
    return str(folder) if (folder / "pyproject.toml").is_file() else distribution


#: Modality -> what to `pip install` for it.
KNOWN_PLUGINS = {
    "image": install_target("anygpt-image"),
    "speech": install_target("anygpt-speech"),
    "music": install_target("anygpt-music"),
    "audio": install_target("anygpt-music"),
}

#: The paper's evaluation tasks -> what to `pip install` for each.
KNOWN_EVAL_TASKS = {
    "coco-caption": install_target("anygpt-image"),
    "coco-t2i": install_target("anygpt-image"),
    "librispeech-asr": install_target("anygpt-speech"),
    "vctk-tts": install_target("anygpt-speech"),
    "musiccaps-t2m": install_target("anygpt-music"),
    "musiccaps-caption": install_target("anygpt-music"),
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
