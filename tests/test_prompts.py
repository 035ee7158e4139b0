from __future__ import annotations

import json

import pytest
from test_protocol import MUSIC, SPEECH

from anygpt_core import ConfigError, InputError
from anygpt_core.prompts import (
    ANYGPT_CHAT,
    MMGPT_CHAT,
    InstructionBank,
    custom_prompt,
    from_text_prompt,
    to_text_prompt,
)


def test_base_templates_byte_for_byte():
    assert to_text_prompt("Describe it.", "<soim><👀1><eoim>") == (
        "[Human]: Describe it. <soim><👀1><eoim><eoh> [MMGPT]:"
    )
    assert from_text_prompt("Draw it.", "a red bus") == (
        "[Human]: Draw it. This is input: a red bus<eoh> [MMGPT]:"
    )
    assert custom_prompt("hi") == "[Human]: hi<eoh>[MMGPT]: "


def test_chat_templates_byte_for_byte():
    system = (
        "You are an AI assistant named MMGPT who can understand and generate multimodal content, "
        "including text, speech, images and audio."
    )
    assert MMGPT_CHAT.render([("user", "Hi")]) == f"{system}\n[Human]: Hi<eoh>\n[MMGPT]:"
    two_turns = MMGPT_CHAT.render([("user", "Hi"), ("bot", "Hello"), ("user", "Bye")])
    assert (
        two_turns == f"{system}\n[Human]: Hi<eoh>\n[MMGPT]: Hello<eos>\n[Human]: Bye<eoh>\n[MMGPT]:"
    )
    assert ANYGPT_CHAT.render([("user", "Hi"), ("bot", "Yo")]).endswith(
        "[Human]: Hi<eoh>\n[AnyGPT]: Yo<eom>"
    )
    empty = [("user", "Hi"), ("bot", ""), ("user", "Bye")]
    assert "[MMGPT]:[Human]: Bye" in MMGPT_CHAT.render(empty)  # FastChat: left open
    assert MMGPT_CHAT.render(empty, keep_empty=True).endswith(
        "[MMGPT]: <eos>\n[Human]: Bye<eoh>\n[MMGPT]:"
    )  # a chat's history: closed


def test_seeded_choice_repeats():
    specs = {
        "speech": SPEECH.model_copy(
            update={
                "instructions": SPEECH.instructions.model_copy(
                    update={"to_text": tuple(f"s{i}" for i in range(30))}
                )
            }
        )
    }
    picks = [
        InstructionBank.from_specs(specs, seed=5).choose("speech", "to_text") for _ in range(3)
    ]
    assert len(set(picks)) == 1
    assert (
        len(
            {
                InstructionBank.from_specs(specs, seed=s).choose("speech", "to_text")
                for s in range(20)
            }
        )
        > 3
    )


def test_user_file_in_reference_layout(tmp_path):
    path = tmp_path / "ins.json"
    path.write_text(
        json.dumps({"other2text": {"music": ["Only this."]}, "text2other": {"music": []}})
    )
    bank = InstructionBank.from_specs({"music": MUSIC}, seed=0, path=path)
    assert bank.choose("music", "to_text") == "Only this."
    assert bank.choose("music", "from_text") == "y"  # empty list keeps the plugin's own


@pytest.mark.parametrize(
    ("content", "error", "message"),
    [
        ("{", InputError, "not a readable JSON file"),
        ('{"text2image": {}}', ConfigError, "unknown key 'text2image'"),
        (
            '{"other2text": {"music": "one"}}',
            ConfigError,
            "other2text.music must be a list of strings",
        ),
    ],
)
def test_bad_instruction_files(tmp_path, content, error, message):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(error, match=message):
        InstructionBank.from_specs({"music": MUSIC}, path=path)
