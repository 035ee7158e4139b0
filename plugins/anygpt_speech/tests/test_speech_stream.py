"""Streamed speech decoding: chunk lengths, the whole-span limit, laziness, seeds, bad input."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from anygpt_speech.codec import SpeechCodec
from anygpt_speech.streaming import WaveStitcher, predict_windows, stitch, windows
from anygpt_speech.tokenizer import decode_codes

from anygpt_core.errors import ConfigError, GenerationError

BENCHMARK = Path(__file__).parents[3] / "benchmarks" / "bench_stream_codec.py"


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models gain nothing from threads, and a busy machine makes them spin."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def codec(tiny_options) -> SpeechCodec:
    return SpeechCodec(tiny_options)


@pytest.fixture(scope="module")
def codes(codec, audio_dir) -> torch.Tensor:
    return codec.encode(audio_dir / "mono16k.wav")  # (1, 100)


def lazily(codes: torch.Tensor, taken: list[int]):
    """Yield one code (an int) at a time, counting them in `taken`."""
    for code in codes[0].tolist():
        taken.append(code)
        yield code


@pytest.mark.parametrize(
    ("window", "context", "overlap"),
    [(25, 0, 0), (25, 25, 4), (30, 50, 4), (48, 10, 12), (7, 3, 6)],
)
def test_stream_chunks_add_up_to_the_whole_length(codec, codes, window, context, overlap):
    chunks = list(
        codec.decode_stream(codes, seed=0, window=window, context=context, overlap=overlap)
    )
    assert all(c.dtype == torch.float32 and c.ndim == 1 and c.numel() for c in chunks)
    assert sum(c.numel() for c in chunks) == codes.shape[1] * 320
    assert len(chunks) == -(-codes.shape[1] // window) + (overlap > 0)


@pytest.mark.parametrize("window", [100, 1000])
def test_stream_window_over_the_whole_span_is_decode(codec, codes, audio_dir, window):
    voice = audio_dir / "voice22k.wav"
    streamed = torch.cat(list(codec.decode_stream(codes, condition=voice, seed=5, window=window)))
    assert torch.equal(streamed, codec.decode(codes, condition=voice, seed=5))
    (layers,) = codec.all_layers_stream(codes, condition=voice, seed=5, window=window)
    assert torch.equal(layers, codec.all_layers(codes, condition=voice, seed=5))


def test_stream_first_chunk_comes_before_the_codes_end(codec, codes):
    taken: list[int] = []
    chunks = codec.decode_stream(lazily(codes, taken), seed=0, window=25, context=25, overlap=4)
    first = next(chunks)
    assert len(taken) == 25  # one window, not the 100 codes
    assert first.numel() == (25 - 4) * 320
    rest = list(chunks)
    assert len(taken) == codes.shape[1]
    assert sum(c.numel() for c in [first, *rest]) == codes.shape[1] * 320


def test_stream_seeded_chunks_repeat_exactly(codec, codes, audio_dir):
    options = {"condition": audio_dir / "other_voice.wav", "window": 30, "context": 20}
    first = list(codec.decode_stream(codes, seed=3, **options))
    # however the codes arrive: all at once, one int at a time, or in uneven tensors
    again = list(codec.decode_stream(lazily(codes, []), seed=3, **options))
    pieces = list(codec.decode_stream(list(codes[0].split(7)), seed=3, **options))
    for other in (again, pieces):
        assert len(other) == len(first)
        assert all(torch.equal(a, b) for a, b in zip(first, other, strict=True))
    changed = list(codec.decode_stream(codes, seed=4, **options))
    assert not torch.equal(torch.cat(first), torch.cat(changed))


def test_stream_voice_prompt_and_context_lead_every_window():
    voice = torch.full((1, 3, 8), 9)
    seen: list[tuple[torch.Tensor, torch.Tensor | None]] = []

    def predict(semantic: torch.Tensor, prompt: torch.Tensor | None) -> torch.Tensor:
        seen.append((semantic, prompt))
        return semantic.expand(8, -1).clone()  # all layers = the semantic codes

    codes = torch.arange(10)
    blocks = list(predict_windows(predict, [codes[:3], codes[3:]], voice, window=4, context=6))
    assert [b[0].tolist() for b in blocks] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    prompts = [p for _, p in seen]
    assert all(p is not None and torch.equal(p[:, :3], voice) for p in prompts)
    assert [p[0, 3:, 0].tolist() for p in prompts if p is not None] == [
        [],
        [0, 1, 2, 3],
        [2, 3, 4, 5, 6, 7],
    ]


def test_stream_windows_do_not_depend_on_how_codes_arrive():
    codes = torch.arange(23)
    expected = [list(range(0, 10)), list(range(10, 20)), [20, 21, 22]]
    for pieces in ([codes], list(codes.split(1)), [codes[:4], codes[4:4], codes[4:19], codes[19:]]):
        assert [w.tolist() for w in windows(pieces, 10)] == expected


@pytest.mark.parametrize(("window", "context", "overlap"), [(5, 0, 0), (5, 3, 2), (4, 9, 3)])
def test_stream_stitcher_of_a_frame_local_decoder_is_exact(window, context, overlap):
    """A decoder whose frames depend on their own code only: seams and fades change nothing."""

    def decode(codes: torch.Tensor) -> torch.Tensor:
        return codes.float().sum(dim=0).repeat_interleave(4)

    layers = torch.randint(0, 1024, (8, 22))
    stitcher = WaveStitcher(decode, hop=4, context=context, overlap=overlap)
    chunks = list(stitch(layers.split(window, dim=1), stitcher))
    torch.testing.assert_close(torch.cat(chunks), decode(layers), rtol=0, atol=1e-3)


def test_stream_is_one_decode_of_the_streamed_codes(codec, codes):
    """The decoder's seams vanish: what streaming changes is SoundStorm's codes alone."""
    options = {"seed": 1, "window": 20, "context": 25}
    streamed = torch.cat(list(codec.decode_stream(codes, **options, overlap=4)))
    layers = torch.cat(list(codec.all_layers_stream(codes, **options)), dim=1)
    assert torch.equal(layers[:1], codes)
    torch.testing.assert_close(streamed, decode_codes(codec.tokenizer, layers))


@pytest.mark.parametrize(
    ("bad", "expected"),
    [
        (torch.tensor([[3, 1024]]), "code 1024 out of range: each codebook holds 0..1023"),
        (torch.tensor([[-1, 2]]), "code -1 out of range: each codebook holds 0..1023"),
        (torch.zeros(2, 5, dtype=torch.long), "codes must have shape [1, T], got [2, 5]"),
        (torch.zeros(1, 0, dtype=torch.long), "no codes to decode"),
        (torch.zeros(1, 4), "codes must be integers, got torch.float32"),
    ],
)
def test_stream_bad_codes_fail_as_decode(codec, codes, bad, expected):
    with pytest.raises(GenerationError) as whole:
        codec.decode(bad, seed=0)
    with pytest.raises(GenerationError) as at_once:
        codec.decode_stream(bad, seed=0)  # a tensor is checked before any chunk
    assert str(whole.value) == str(at_once.value) == f"speech: {expected}"
    if not bad.numel():  # an empty piece in a stream is no error: more codes may follow
        return
    # from an iterable, when the bad piece arrives: good codes first, then the bad ones
    stream = codec.decode_stream([codes[0, :30], bad], seed=0, window=20, overlap=0)
    assert next(stream).numel() == 20 * 320
    with pytest.raises(GenerationError) as later:
        list(stream)
    assert str(later.value) == f"speech: {expected}"


def test_stream_of_no_codes_fails_as_decode(codec):
    with pytest.raises(GenerationError, match=r"^speech: no codes to decode$"):
        list(codec.decode_stream(iter([]), seed=0))


@pytest.mark.parametrize(
    ("sizes", "expected"),
    [
        ({"window": 0}, "speech stream window 0: expected at least 1 frame"),
        ({"context": -1}, "speech stream context -1, overlap 4: expected 0 or more frames"),
        ({"window": 4}, "speech stream overlap 4: expected fewer frames than the window (4)"),
    ],
)
def test_stream_bad_window_sizes_are_config_errors(codec, codes, sizes, expected):
    with pytest.raises(ConfigError) as err:
        codec.decode_stream(codes, **sizes)
    assert str(err.value) == expected


def test_stream_benchmark_quick_runs():
    proc = subprocess.run(
        [sys.executable, str(BENCHMARK), "--quick"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    table, seams = proc.stdout.split("window context", 1)[1].split("decoder seams", 1)
    rows = [line.split() for line in table.splitlines()[1:]]
    assert [row[:2] for row in rows] == [["25", "0"], ["25", "25"], ["whole", "0"]]
    assert rows[-1][2:5] == ["1.000", "1.000", "inf"]  # one window: decode itself
    assert "decoder sensitivity" in proc.stdout
    assert "floor (whole" in proc.stdout
    assert float(seams.splitlines()[-1].split()[-1]) > 100  # context 25, overlap 4: no seam left
