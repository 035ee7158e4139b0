from __future__ import annotations

import re

import pytest

from anygpt_core import PluginError
from anygpt_core.plugins import discover


def states(plugins):
    return {info.name: (info.state, info.error) for info in plugins.infos}


def test_toy_discovered_through_its_entry_point(toy_env):
    plugins = discover()
    info = next(i for i in plugins.infos if i.name == "toy")
    assert info.state == "loaded"
    assert info.distribution == "anygpt-toy" and info.version == "0.1"
    assert info.hooks == ["anygpt_demo_assets", "anygpt_modalities"]
    assert list(plugins.modalities) == ["toy"]
    assert [o.flag for o in plugins.options()] == ["--toy-codec-path"]


def test_broken_and_conflicting_plugins_are_isolated(toy_env, monkeypatch):
    monkeypatch.setenv("ANYGPT_LOAD_PLUGINS", "toy,broken,clash,typo")
    plugins = discover()
    found = states(plugins)
    # Entry points load in name order (ours first), so `clash` registers the prefix before `toy`.
    assert found["clash"] == ("loaded", None)
    assert found["broken"] == ("broken", "RuntimeError: this plugin is broken on purpose")
    assert found["toy"][0] == "conflict"
    assert "prefix '🧪' already registered by 'clash'" in found["toy"][1]
    assert found["typo"][0] == "broken" and "anygpt_modalitys" in found["typo"][1]
    assert list(plugins.modalities) == ["clash"]


def test_blocked_by_argument_and_environment(toy_env, monkeypatch):
    assert states(discover(block=["toy"]))["toy"][0] == "blocked"
    monkeypatch.setenv("ANYGPT_BLOCK_PLUGINS", "broken, toy")
    plugins = discover()
    assert states(plugins)["toy"][0] == "blocked"
    with pytest.raises(PluginError, match=r"not loaded: .*toy \(blocked\)"):
        plugins.modality("toy")


def test_load_only_selects(toy_env, monkeypatch):
    monkeypatch.setenv("ANYGPT_LOAD_PLUGINS", "clash")
    plugins = discover()
    assert states(plugins)["toy"][0] == "not selected"
    assert list(plugins.modalities) == ["clash"]  # without toy, clash has no conflict


def test_missing_known_modality_names_the_package(text_only_env):
    """The core names no plugin of its own; the caller says which it knows (the CLI: ours)."""
    from anygpt_cli.catalogue import KNOWN_PLUGINS

    with pytest.raises(PluginError, match=re.escape(f"pip install {KNOWN_PLUGINS['speech']}")):
        discover(known=KNOWN_PLUGINS).modality("speech")
    with pytest.raises(PluginError, match="unknown modality 'speech'; installed: text"):
        discover().modality("speech")
    with pytest.raises(PluginError, match="unknown modality 'smell'; installed: text"):
        discover(known=KNOWN_PLUGINS).modality("smell")


def test_known_distributions_load_first_and_win_a_conflict(toy_env, monkeypatch):
    monkeypatch.setenv("ANYGPT_LOAD_PLUGINS", "toy,clash")
    found = states(discover(known={"toy": "anygpt-toy"}))
    assert found["toy"] == ("loaded", None)
    assert found["clash"][0] == "conflict"


def test_modalities_are_ordered_by_their_declared_rank(toy_env, monkeypatch):
    from anygpt_core.plugins import modality_order

    toy = discover().modality("toy")
    first = toy.model_copy(update={"name": "zzz", "rank": 0})
    assert [s.name for s in modality_order([toy, first])] == ["zzz", "toy"]


def test_hook_anygpt_modalities(toy_env):
    (impl,) = [i for i in discover().manager.hook.anygpt_modalities.get_hookimpls()]
    (spec,) = impl.function()
    assert spec.token_strings()[:2] == ["<🧪0>", "<🧪1>"]
    assert spec.token_strings()[-2:] == ["<soty>", "<eoty>"]
    assert len(spec.token_strings()) == 34


def test_hook_anygpt_demo_assets(toy_env, tmp_path):
    values = discover().demo_assets(tmp_path)
    assert values == {"toy_codec_path": str(tmp_path / "toy" / "toy_codec.json")}
    assert (tmp_path / "toy" / "toy_codec.json").is_file()


def test_hook_anygpt_eval_tasks(toy_env, monkeypatch):
    """Each of our plugins adds the paper's tasks of its modality; a third party's are found too."""
    from anygpt_core.evaluation import EvalTask

    monkeypatch.setenv("ANYGPT_LOAD_PLUGINS", "toy,image,speech,music,sequence")
    tasks = discover().eval_tasks()
    assert {
        "coco-caption",
        "coco-t2i",
        "librispeech-asr",
        "vctk-tts",
        "musiccaps-t2m",
        "musiccaps-caption",
    } <= set(tasks)
    assert all(isinstance(t, EvalTask) for t in tasks.values())
    assert tasks["librispeech-asr"].headline.paper == 8.5
    assert tasks["vctk-tts"].scorers == ("whisper", "wavlm-sv")
    monkeypatch.setenv("ANYGPT_LOAD_PLUGINS", "toy")
    with pytest.raises(PluginError, match="needs a plugin: pip install anygpt-speech"):
        discover().eval_task("vctk-tts", {"vctk-tts": "anygpt-speech"})
    with pytest.raises(PluginError, match="unknown eval task 'nope'"):
        discover().eval_task("nope")


def test_every_hook_is_documented_and_tested():
    import inspect
    from pathlib import Path

    from anygpt_core import spec as hookspecs

    contract = (Path(__file__).parents[1] / "docs" / "new-modality.md").read_text()
    source = Path(__file__).read_text()
    hooks = [
        n for n, f in inspect.getmembers(hookspecs, inspect.isfunction) if n.startswith("anygpt_")
    ]
    assert hooks
    for name in hooks:
        assert f"`{name}" in contract, f"{name} is not documented in docs/new-modality.md"
        assert f"def test_hook_{name}(" in source, f"{name} has no test"
