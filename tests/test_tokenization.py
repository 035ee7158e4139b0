from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from anygpt_core.tokenization import ReferencePromptEncoder

# Golden pieces: transformers 4.34.1's slow LlamaTokenizer (the reference's pin) loaded from the
# text-only demo model directory, once with "legacy": true (4.34's default) and once with false.
# Made with `LlamaTokenizer.from_pretrained(dir)(prompt)` in a venv holding transformers==4.34.1.
PROMPTS = [
    "[Human]: Tell me a story.<eoh> [MMGPT]:",
    "[Human]: hi<eoh>[MMGPT]: ",
    "You are an assistant.\n[Human]: Hi<eoh>\n[MMGPT]: Hello<eos>\n[Human]:  two  spaces<eoh>\n[MMGPT]:",
]
# Each entry is the token strings joined by single spaces (no piece holds a space).
GOLDEN = {
    "t_true": [
        "<s> [Human] ▁ : ▁T ell ▁me ▁a ▁s t or y . <eoh> ▁ ▁ [MMGPT] ▁ :",
        "<s> [Human] ▁ : ▁ hi <eoh> [MMGPT] ▁ : ▁",
        "<s> ▁ <0x59> ou ▁are ▁an ▁as s is t an t . <0x0A> [Human] ▁ : ▁H i <eoh> ▁ <0x0A> [MMGPT] ▁ : ▁H ell o <eos> ▁ <0x0A> [Human] ▁ : ▁ ▁t w o ▁ ▁s p ac es <eoh> ▁ <0x0A> [MMGPT] ▁ :",
    ],
    "t_false": [
        "<s> ▁ [Human] : ▁T ell ▁me ▁a ▁s t or y . <eoh> ▁ [MMGPT] :",
        "<s> ▁ [Human] : ▁ hi <eoh> [MMGPT] : ▁",
        "<s> ▁ <0x59> ou ▁are ▁an ▁as s is t an t . <0x0A> [Human] : ▁H i <eoh> <0x0A> [MMGPT] : ▁H ell o <eos> <0x0A> [Human] : ▁ ▁t w o ▁ ▁s p ac es <eoh> <0x0A> [MMGPT] :",
    ],
}


@pytest.fixture
def demo_dir(text_only_env):
    from anygpt_core.demo import ensure_demo
    from anygpt_core.plugins import discover

    return ensure_demo(discover()).model_dir


def with_legacy(demo_dir, tmp_path, legacy):
    """A copy of the demo's tokenizer files whose tokenizer_config.json says `legacy`."""
    import shutil

    directory = tmp_path / "tok"
    shutil.copytree(demo_dir, directory)
    config = json.loads((directory / "tokenizer_config.json").read_text())
    (directory / "tokenizer_config.json").write_text(json.dumps({**config, "legacy": legacy}))
    return directory


def golden(legacy, index):
    return GOLDEN["t_true" if legacy else "t_false"][index].split(" ")


@pytest.mark.parametrize("legacy", [True, False])
def test_prompts_tokenize_as_transformers_4_34(demo_dir, tmp_path, legacy):
    from transformers import AutoTokenizer

    directory = with_legacy(demo_dir, tmp_path, legacy)
    tokenizer = AutoTokenizer.from_pretrained(directory)
    encoder = ReferencePromptEncoder.from_directory(directory, tokenizer)
    for index, prompt in enumerate(PROMPTS):
        ids = encoder.encode(prompt)[0].tolist()
        assert tokenizer.convert_ids_to_tokens(ids) == golden(legacy, index)


def test_transformers_5_alone_differs_which_is_why_this_exists(demo_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(demo_dir)  # the demo says "legacy": true
    ids = tokenizer(PROMPTS[0]).input_ids
    assert tokenizer.convert_ids_to_tokens(ids) != golden(True, 0)


def test_the_api_uses_the_reference_encoding(text_only_env):
    from anygpt_core.api import AnyGPT

    gpt = AnyGPT.load(device="cpu")
    ids = gpt.encode_prompt(PROMPTS[0])[0].tolist()
    assert gpt.tokenizer.convert_ids_to_tokens(ids) == golden(True, 0)


def test_without_a_sentencepiece_model_there_is_no_reference_encoder(tmp_path):
    assert ReferencePromptEncoder.from_directory(tmp_path, tokenizer=None) is None


@pytest.mark.parametrize("legacy", [True, False])
def test_offsets_point_at_the_text_of_each_token(demo_dir, tmp_path, legacy):
    from transformers import AutoTokenizer

    from anygpt_core.tokenization import ReferenceTokenizer

    directory = with_legacy(demo_dir, tmp_path, legacy)
    tokenizer = ReferenceTokenizer.wrap(directory, AutoTokenizer.from_pretrained(directory))
    text = PROMPTS[2]
    encoded = tokenizer(text, return_offsets_mapping=True)
    tokens = tokenizer.convert_ids_to_tokens(encoded.input_ids)
    assert tokens == golden(legacy, 2)
    for token, (start, end) in zip(tokens, encoded.offset_mapping, strict=True):
        if token in {"[Human]", "[MMGPT]", "<eoh>", "<eos>"}:
            assert text[start:end] == token
        elif token.startswith("▁") and len(token) > 1 and end > start:
            assert text[start:end].strip() == token[1:]
    assert tokenizer(text, truncation=True, max_length=5).input_ids == encoded.input_ids[:5]


class QuadraticEncoder(ReferencePromptEncoder):
    """The encoder as it was before it became linear: every prefix of a chunk decoded, each
    piece's span read from SentencePiece's proto, one piece at a time."""

    def _pieces(self, chunk):
        prefix = ""
        if not self.legacy and chunk.startswith(("\u2581", " ")):
            prefix = "<unk>"
        encoded = self.sp.encode(prefix + chunk, return_type="proto")
        data = (prefix + chunk).encode("utf-8")
        to_char = [len(data[:i].decode("utf-8", errors="ignore")) for i in range(len(data) + 1)]
        pieces = [(p.piece, to_char[p.begin], to_char[p.end]) for p in encoded.pieces]
        if prefix:
            if len(pieces) >= self.unk_length:
                pieces = pieces[self.unk_length :]
            pieces = [
                (piece, max(0, b - len(prefix)), max(0, e - len(prefix))) for piece, b, e in pieces
            ]
        return pieces

    def ids_with_offsets(self, text):
        text, shift = self._prepared(text)
        out = []
        for chunk, offset in self._split(text):
            if chunk in self.added:
                out.append((chunk, offset, offset + len(chunk)))
            else:
                out += [(p, offset + b, offset + e) for p, b, e in self._pieces(chunk)]
        if not self.legacy and len(out) > 1 and out[0][0] == "\u2581" and out[1][0] in self.special:
            out = out[1:]
        ids = [self._id(t) for t, _, _ in out]
        offsets = [(max(0, b - shift), max(0, e - shift)) for _, b, e in out]
        if self.add_bos:
            ids, offsets = [self.bos_id, *ids], [(0, 0), *offsets]
        return ids, offsets


@pytest.fixture(scope="module")
def both_encoders(tmp_path_factory):
    """(legacy, linear encoder, quadratic encoder) for legacy true and false."""
    from transformers import AutoTokenizer

    from anygpt_core.demo import ensure_demo
    from anygpt_core.plugins import discover

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("ANYGPT_LOAD_PLUGINS", "__none__")
        demo = ensure_demo(discover()).model_dir
    out = []
    for legacy in (True, False):
        directory = with_legacy(demo, tmp_path_factory.mktemp("tok"), legacy)
        tokenizer = AutoTokenizer.from_pretrained(directory)
        model = (directory / "tokenizer.model").read_bytes()
        out.append(
            (
                ReferencePromptEncoder(model, tokenizer, legacy=legacy),
                QuadraticEncoder(model, tokenizer, legacy=legacy),
            )
        )
    return out


# Text mixing every kind of character the encoder meets: ASCII, accents, CJK, emoji (4 UTF-8
# bytes, ZWJ sequences, the variation selector of 🗣️), SentencePiece's ▁, whitespace runs,
# byte-fallback characters and the added tokens themselves (strip flags apply around them).
_PIECES = st.sampled_from(
    [
        "[Human]",
        "[MMGPT]",
        "<eoh>",
        "<eos>",
        "<s>",
        "</s>",
        "<unk>",
        "▁",
        " ",
        "  ",
        "\n",
        "\t",
        "é",
        "日本語",
        "🗣️",
        "👩‍👩‍👧",
        "<👀12>",
        "<soim>",
        "\u00a0",
        "\ufeff",
    ]
)
_TEXT = st.lists(st.one_of(st.text(max_size=12), _PIECES), max_size=24).map("".join)


@given(text=_TEXT)
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_linear_encoder_equals_the_quadratic_one_on_any_text(both_encoders, text):
    for linear, quadratic in both_encoders:
        expected = quadratic.ids_with_offsets(text)
        assert linear.ids_with_offsets(text) == expected
        assert linear.ids(text) == expected[0]


class VocabOnly:
    """What the encoder reads of a transformers tokenizer, for a SentencePiece model of our own."""

    def __init__(self, sp, added):
        self.vocab = {sp.id_to_piece(i): i for i in range(sp.get_piece_size())} | added
        self.all_special_tokens = ["<s>", "</s>", "<unk>"]
        self.added_tokens_decoder = {}

    def get_vocab(self):
        return dict(self.vocab)

    def convert_tokens_to_ids(self, token):
        return self.vocab[token]


# SentencePiece training options of the models without byte fallback: the default normalizer
# (NFKC, extra whitespace removed: spans piece by piece) and LLaMA's (characters kept: spans
# from piece lengths, chunks with unknown pieces piece by piece), with a user-defined symbol
NORMALIZERS = [{}, {"normalization_rule_name": "identity", "remove_extra_whitespaces": False}]


@pytest.fixture(scope="module", params=NORMALIZERS, ids=["nfkc", "identity"])
def no_byte_fallback(request):
    """Encoders of a model without byte fallback (unknown pieces), one added token (`ab`) that is
    also a SentencePiece piece of another id, and `<eoh>`."""
    import io

    import sentencepiece as spm

    model = io.BytesIO()
    corpus = ["ab abc abcd bcd cd da", "a b c d ab bc cd"] * 20
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus),
        model_writer=model,
        vocab_size=20,
        model_type="bpe",
        byte_fallback=False,
        user_defined_symbols=["d▁a"],
        minloglevel=2,
        **request.param,
    )
    sp = spm.SentencePieceProcessor(model_proto=model.getvalue())
    assert sp.piece_to_id("▁ab") != sp.unk_id()
    size = sp.get_piece_size()
    tokenizer = VocabOnly(sp, {"<eoh>": size, "▁ab": size + 1})
    return [
        (
            ReferencePromptEncoder(model.getvalue(), tokenizer, legacy=legacy),
            QuadraticEncoder(model.getvalue(), tokenizer, legacy=legacy),
        )
        for legacy in (True, False)
    ]


@given(
    text=st.lists(
        st.sampled_from(
            ["a", "b", "cd", "d a", " ", "  ", "▁ab", "é", "日", "🐈", "\t", "<eoh>", "x"]
        )
    ).map("".join)
)
@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
def test_unknown_and_renamed_pieces_equal_the_quadratic_encoder(no_byte_fallback, text):
    for linear, quadratic in no_byte_fallback:
        expected = quadratic.ids_with_offsets(text)
        assert linear.ids_with_offsets(text) == expected
        assert linear.ids(text) == expected[0]


def test_spans_come_from_piece_lengths_under_llamas_normalizer_only(
    both_encoders, no_byte_fallback
):
    # the fast path (no piece handled in Python) must be the one the published models take
    assert all(linear._tables.lengths is not None for linear, _ in both_encoders)
    identity = no_byte_fallback[0][0].sp.serialized_model_proto().find(b"identity") >= 0
    assert all((linear._tables.lengths is not None) == identity for linear, _ in no_byte_fallback)
