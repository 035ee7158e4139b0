from __future__ import annotations

import json

import pytest

from anygpt_core import ConfigError, DecodingConfig, load_decoding_config
from anygpt_core.api import TEXT_DECODING

# The seed's config/*_generate_config.json files, as published (spacing included).
SEED_CONFIGS = {
    "text": '{\n    "temperature": 1.0,\n    "top_p": 1.0,\n    "do_sample": true,\n'
    '    "max_new_tokens": 100,\n    "min_new_tokens": 10\n}',
    "music": '{\n    "temperature": 1,\n    "top_p":  1.0,\n    "top_k": 200,\n    "do_sample": true,\n'
    '    "max_new_tokens": 2000,\n    "min_new_tokens": 10,\n    "repetition_penalty": 1.15\n}',
    "speech": '{\n    "temperature": 1,\n    "top_p":  1.0,\n    "do_sample": true, \n'
    '    "max_new_tokens": 1500,\n    "min_new_tokens": 10,\n    "repetition_penalty": 1.05,\n'
    '    "vc_steps": 4\n}',
    "chat": '{\n    "temperature": 1.0,\n    "top_p": 1.0,\n    "do_sample": true,\n'
    '    "max_new_tokens": 500,\n    "min_new_tokens": 10,\n    "repetition_penalty": 1.0,\n'
    '    "vc_steps": 3,\n    "num_beams": 5\n}',
}


@pytest.mark.parametrize("name", list(SEED_CONFIGS))
def test_seed_configs_load_unchanged(tmp_path, name):
    path = tmp_path / f"{name}.json"
    path.write_text(SEED_CONFIGS[name])
    base = StepsDecoding()
    config = load_decoding_config(path, base=base)
    assert type(config) is StepsDecoding
    assert config.model_dump(exclude_defaults=True) == {
        k: v for k, v in json.loads(SEED_CONFIGS[name]).items() if getattr(base, k) != v
    }
    assert config.min_new_tokens == 10  # applied as written, unlike the reference


class StepsDecoding(DecodingConfig):
    """What a plugin whose decoder reads more fields declares (the speech plugin: `vc_steps`)."""

    vc_steps: int | None = None


def test_a_plugins_field_serves_its_modality_and_is_left_by_the_others(tmp_path):
    path = tmp_path / "chat.json"
    path.write_text(SEED_CONFIGS["chat"])
    fields = set(StepsDecoding.model_fields)
    assert load_decoding_config(path, base=StepsDecoding(), other_fields=fields).vc_steps == 3
    text = load_decoding_config(path, base=DecodingConfig(), other_fields=fields)
    assert type(text) is DecodingConfig and text.num_beams == 5
    assert StepsDecoding().merged(vc_steps=4) == StepsDecoding(vc_steps=4)
    with pytest.raises(ConfigError, match=r"chat\.json: vc_steps: unknown field"):
        load_decoding_config(path)  # no installed modality reads it


def test_text_default_spells_out_the_reference_effective_values():
    assert TEXT_DECODING.top_k == 50 and TEXT_DECODING.min_new_tokens == 0
    assert TEXT_DECODING.max_new_tokens == 100 and TEXT_DECODING.do_sample


def test_every_bad_field_is_named(tmp_path):
    path = tmp_path / "c.json"
    path.write_text('{"temperature": 0, "top_k": -1, "beam": 2}')
    with pytest.raises(ConfigError) as info:
        load_decoding_config(path)
    assert str(info.value) == (
        f"{path}: temperature: Input should be greater than 0; top_k: Input should be greater than or "
        "equal to 0; beam: unknown field"
    )


def test_file_fields_override_the_base_and_flags_override_the_file(tmp_path):
    path = tmp_path / "c.json"
    path.write_text('{"top_p": 0.5}')
    config = load_decoding_config(path, base=TEXT_DECODING).merged(max_new_tokens=7, top_k=None)
    assert (config.top_p, config.top_k, config.max_new_tokens) == (0.5, 50, 7)
    with pytest.raises(ConfigError, match="temperature"):
        config.merged(temperature=-1)
