from __future__ import annotations

import random

import pytest
import torch
from test_protocol import IMAGE, MUSIC, SPEECH

from anygpt_core import CheckpointError, ModalityUnavailableError
from anygpt_core.tokens import TokenSpace


class FakeTokenizer:
    """Just the two methods TokenSpace reads."""

    def __init__(self, tokens, eos=2):
        self.vocab = {t: i for i, t in enumerate(tokens)}
        self.eos_token_id = eos

    def get_vocab(self):
        return dict(self.vocab)

    def __len__(self):
        return len(self.vocab)


#: SentencePiece's three specials, then the AnyGPT role tokens.
SPECIAL = ["<unk>", "<s>", "</s>", "[Human]", "[MMGPT]", "<eoh>", "<eos>"]


def published_order():
    tokens = [f"<base{i}>" for i in range(32000)] + ["[Human]", "[MMGPT]", "<eoh>", "<eos>"]
    for spec in (IMAGE, SPEECH, MUSIC):
        tokens += spec.token_strings()
    return tokens


def test_ids_of_the_published_order():
    space = TokenSpace(
        FakeTokenizer(published_order()), {"image": IMAGE, "speech": SPEECH, "music": MUSIC}
    )
    assert (space.human_id, space.mmgpt_id, space.eoh_id, space.eos_id) == (
        32000,
        32001,
        32002,
        32003,
    )
    image, speech, music = (space.require(n) for n in ("image", "speech", "music"))
    assert int(image.code_ids[0]) == 32004 and (image.start_id, image.end_id) == (40196, 40197)
    assert int(speech.code_ids[0]) == 40198 and (speech.start_id, speech.end_id) == (41222, 41223)
    assert int(music.code_ids[0]) == 41224 and (music.start_id, music.end_id) == (49416, 49417)
    assert music.layer_ranges[3] == (41224 + 6144, 41224 + 8192)
    assert space.stop_ids == (2, 32003)


def test_codes_ids_round_trip_when_tokens_are_not_contiguous():
    tokens = [
        *SPECIAL,
        *MUSIC.token_strings(),
    ]
    head, rest = tokens[:3], tokens[3:]
    random.Random(0).shuffle(rest)
    space = TokenSpace(FakeTokenizer(head + rest), {"music": MUSIC})
    music = space.require("music")
    assert all(r is None for r in music.layer_ranges)
    codes = torch.randint(0, 2048, (4, 25), generator=torch.Generator().manual_seed(1))
    ids = space.codes_to_ids("music", codes)
    assert ids[0] == music.start_id and ids[-1] == music.end_id
    assert torch.equal(space.ids_to_codes("music", ids[1:-1]), codes)


def test_missing_modality_tokens_are_named():
    tokens = [
        *SPECIAL,
        *SPEECH.token_strings(),
    ]
    space = TokenSpace(FakeTokenizer(tokens), {"speech": SPEECH, "music": MUSIC})
    assert list(space.modalities) == ["speech"]
    with pytest.raises(ModalityUnavailableError, match="lacks 8194 of the 8194 music tokens"):
        space.require("music")


def test_tokenizer_without_role_tokens_is_refused():
    with pytest.raises(CheckpointError, match=r"lacks the AnyGPT role tokens \[Human\]"):
        TokenSpace(FakeTokenizer(SPECIAL[:3]), {})
