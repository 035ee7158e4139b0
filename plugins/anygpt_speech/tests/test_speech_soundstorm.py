"""SoundStorm: the published key layout, strict loading, and the mask-predict schedule."""

from __future__ import annotations

import json
import re

import pytest
import torch
from anygpt_speech.codec import SpeechCodec
from anygpt_speech.soundstorm import SoundStorm, SoundStormConfig

from anygpt_core.errors import CheckpointError, ConfigError

# Per-block keys of AnyGPT's SoundStorm (renamed conv module: net1 / ds_conv / net2) with their
# shapes as functions of (dim d, heads*dim_head i); recorded from the reference modules.
BLOCK = {
    "ff1.fn.fn.net.0.weight": lambda d, i: (4 * d, d),
    "ff1.fn.fn.net.0.bias": lambda d, i: (4 * d,),
    "ff1.fn.fn.net.3.weight": lambda d, i: (d, 4 * d),
    "ff1.fn.fn.net.3.bias": lambda d, i: (d,),
    "ff1.fn.norm.weight": lambda d, i: (d,),
    "ff1.fn.norm.bias": lambda d, i: (d,),
    "attn.fn.to_q.weight": lambda d, i: (i, d),
    "attn.fn.to_kv.weight": lambda d, i: (2 * i, d),
    "attn.fn.to_out.weight": lambda d, i: (d, i),
    "attn.fn.to_out.bias": lambda d, i: (d,),
    "attn.norm.weight": lambda d, i: (d,),
    "attn.norm.bias": lambda d, i: (d,),
    "conv.net1.0.weight": lambda d, i: (d,),
    "conv.net1.0.bias": lambda d, i: (d,),
    "conv.net1.2.weight": lambda d, i: (4 * d, d, 1),
    "conv.net1.2.bias": lambda d, i: (4 * d,),
    "conv.ds_conv.conv.weight": lambda d, i: (2 * d, 1, 31),
    "conv.ds_conv.conv.bias": lambda d, i: (2 * d,),
    "conv.net2.1.gamma": lambda d, i: (1, 2 * d, 1),
    "conv.net2.2.weight": lambda d, i: (d, 2 * d, 1),
    "conv.net2.2.bias": lambda d, i: (d,),
    "ff2.fn.fn.net.0.weight": lambda d, i: (4 * d, d),
    "ff2.fn.fn.net.0.bias": lambda d, i: (4 * d,),
    "ff2.fn.fn.net.3.weight": lambda d, i: (d, 4 * d),
    "ff2.fn.fn.net.3.bias": lambda d, i: (d,),
    "ff2.fn.norm.weight": lambda d, i: (d,),
    "ff2.fn.norm.bias": lambda d, i: (d,),
    "post_norm.weight": lambda d, i: (d,),
    "post_norm.bias": lambda d, i: (d,),
}


def expected_shapes(c: SoundStormConfig) -> dict[str, tuple[int, ...]]:
    d, q, v = c.dim, c.num_quantizers, c.codebook_size
    shapes = {
        f"net.conformer.layers.{n}.{k}": f(d, c.heads * c.dim_head)
        for n in range(c.depth)
        for k, f in BLOCK.items()
    }
    shapes |= {
        "net.code_embeds.weight": ((v + 1) * q, d),
        "net.heads.0.weight": (d * q, d),
        "net.heads.0.bias": (d * q,),
        "net.to_logits.0.weight": (d,),
        "net.to_logits.0.bias": (d,),
        "net.to_logits.2.weight": (q, d, v),
        "net.to_logits.2.bias": (1, 1, q, v),
        "semantic_token_emb.weight": (v, d),
    }
    return shapes


def meta_state(config: SoundStormConfig) -> dict[str, torch.Tensor]:
    with torch.device("meta"):
        return SoundStorm(config).state_dict()


def test_soundstorm_published_keys_and_shapes():
    state = meta_state(SoundStormConfig())
    assert {k: tuple(v.shape) for k, v in state.items()} == expected_shapes(SoundStormConfig())
    assert len(state) == 356
    assert sum(v.numel() for v in state.values()) == 351_378_432
    assert state["net.code_embeds.weight"].shape == (7175, 1024)
    assert state["net.heads.0.weight"].shape == (7168, 1024)
    assert state["net.to_logits.2.bias"].shape == (1, 1, 7, 1024)
    assert state["net.conformer.layers.11.conv.ds_conv.conv.weight"].shape == (2048, 1, 31)


def test_soundstorm_tiny_keys_and_shapes():
    state = meta_state(SoundStormConfig.tiny())
    assert {k: tuple(v.shape) for k, v in state.items()} == expected_shapes(SoundStormConfig.tiny())
    assert len(state) == 66
    assert state["net.heads.0.weight"].shape == (224, 32)


def codec(tiny_options, **overrides) -> SpeechCodec:
    return SpeechCodec({**tiny_options, **overrides})


def upstream_names(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """soundstorm-pytorch's names for the conv module (before AnyGPT renamed them)."""
    renames = {
        "net1.0": "net.0",
        "net1.2": "net.2",
        "ds_conv.conv": "net.4.conv",
        "net2.1": "net.6",
        "net2.2": "net.7",
    }
    out = {}
    for key, value in state.items():
        for ours, theirs in renames.items():
            key = key.replace(f".conv.{ours}.", f".conv.{theirs}.")
        out[key] = value
    return out


def test_soundstorm_upstream_checkpoint_is_refused_in_one_line(tiny_options, tmp_path):
    state = torch.load(tiny_options["soundstorm_path"], weights_only=True)
    torch.save(upstream_names(state), tmp_path / "upstream.pt")
    with pytest.raises(CheckpointError) as err:
        _ = codec(tiny_options, soundstorm_path=str(tmp_path / "upstream.pt")).soundstorm
    message = str(err.value)
    assert "\n" not in message
    assert re.search(
        r"upstream\.pt: does not match the SoundStorm model: 18 missing keys "
        r"\(net\.conformer\.layers\.0\.conv\.net1\.0\.weight, .*18 unexpected keys "
        r"\(net\.conformer\.layers\.0\.conv\.net\.0\.weight",
        message,
    )
    assert "upstream soundstorm-pytorch names" in message


def test_soundstorm_size_mismatch_names_shapes(tiny_options, tmp_path):
    config = SoundStormConfig.tiny().model_copy(update={"dim": 48, "dim_head": 24})
    (tmp_path / "wide.json").write_text(json.dumps(config.model_dump()))
    with pytest.raises(CheckpointError) as err:
        _ = codec(tiny_options, soundstorm_config=str(tmp_path / "wide.json")).soundstorm
    message = str(err.value)
    assert (
        "65 shape mismatches (file vs model: semantic_token_emb.weight (1024, 32) vs (1024, 48)"
        in message
    )
    assert f"does --soundstorm-config {tmp_path / 'wide.json'} describe this checkpoint?" in message


def test_soundstorm_default_architecture_refuses_tiny_file(tiny_options):
    with pytest.raises(CheckpointError, match="the published architecture"):
        _ = codec(tiny_options, soundstorm_config=None).soundstorm


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        ({"dim": 32, "depth": 0}, "depth: Input should be greater than 0"),
        ({"dim": 32, "layers": 2}, "layers: unknown field"),
        (
            {"num_quantizers": 3},
            "SoundStorm predicts 3 acoustic layers but the SpeechTokenizer has 7",
        ),
    ],
)
def test_soundstorm_bad_config_is_one_line(tiny_options, tmp_path, config, expected):
    (tmp_path / "bad.json").write_text(json.dumps(config))
    with pytest.raises(ConfigError) as err:
        _ = codec(tiny_options, soundstorm_config=str(tmp_path / "bad.json")).soundstorm
    assert expected in str(err.value)
    assert "\n" not in str(err.value)


@pytest.fixture(scope="module")
def tiny_model() -> SoundStorm:
    torch.manual_seed(3)
    return SoundStorm(SoundStormConfig.tiny()).eval()


def test_soundstorm_generate_shape_range_and_passes(tiny_model, monkeypatch):
    calls = []
    original = tiny_model.net.forward
    monkeypatch.setattr(tiny_model.net, "forward", lambda *a: calls.append(1) or original(*a))
    semantic = torch.randint(0, 1024, (1, 40))
    out = tiny_model.generate(semantic, steps=3, generator=torch.Generator().manual_seed(0))
    assert out.shape == (1, 40, 7)
    assert out.dtype == torch.long
    assert int(out.min()) >= 0
    assert int(out.max()) < 1024
    assert len(calls) == tiny_model.forward_passes(3) == 10


def test_soundstorm_seeded_runs_repeat(tiny_model):
    semantic = torch.randint(0, 1024, (1, 30), generator=torch.Generator().manual_seed(1))
    runs = [
        tiny_model.generate(semantic, generator=torch.Generator().manual_seed(5)) for _ in range(2)
    ]
    other = tiny_model.generate(semantic, generator=torch.Generator().manual_seed(6))
    assert torch.equal(runs[0], runs[1])
    assert not torch.equal(runs[0], other)


def test_soundstorm_prompt_changes_codes_and_stays_out_of_output(tiny_model):
    semantic = torch.randint(0, 1024, (1, 30), generator=torch.Generator().manual_seed(1))
    prompt = torch.randint(0, 1024, (1, 12, 8), generator=torch.Generator().manual_seed(2))
    plain = tiny_model.generate(semantic, steps=1)
    prompted = tiny_model.generate(semantic, prompt=prompt, steps=1)
    assert prompted.shape == plain.shape == (1, 30, 7)
    assert not torch.equal(plain, prompted)


def test_soundstorm_attention_matches_plain_softmax(tiny_model):
    """Rotary attention through SDPA equals the written-out formula of the reference."""
    block = tiny_model.net.conformer.layers[0].attn.fn
    x = torch.randn(2, 9, 32, generator=torch.Generator().manual_seed(0))
    from anygpt_speech.soundstorm import _rotary_angles, _rotate_half

    angles = _rotary_angles(9, 16, x.device)
    q, k, v = block.to_q(x), *block.to_kv(x).chunk(2, dim=-1)
    q, k, v = (t.view(2, 9, 2, 16).transpose(1, 2) for t in (q, k, v))
    q = q * angles.cos() + _rotate_half(q) * angles.sin()
    k = k * angles.cos() + _rotate_half(k) * angles.sin()
    attn = (q @ k.transpose(-1, -2) * 16**-0.5).softmax(dim=-1)
    expected = block.to_out((attn @ v).transpose(1, 2).reshape(2, 9, 32))
    torch.testing.assert_close(block(x, angles=angles), expected)
