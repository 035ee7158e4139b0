import hashlib
import math
import re

import pytest
import torch
from anygpt_image.config import SeedConfig
from anygpt_image.demo import build_tiny_seed
from anygpt_image.seed import SeedTokenizer

# Facts of the published AILab-CVC/seed-tokenizer-2 architecture, recorded from the reference
# modules (AnyGPT 282b58f, Blip2QformerQuantizer as ImageTokenizer builds it): 881 state-dict keys,
# 1,149,998,528 parameters plus the int64 buffer Qformer.bert.embeddings.position_ids [1, 512].
# The checksum is sha256 over the sorted lines "key:d0,d1,..." joined by "\n".
PUBLISHED_KEYS = 881
PUBLISHED_PARAMETERS = 1_149_998_528
PUBLISHED_VIT_PARAMETERS = 985_894_528
PUBLISHED_CHECKSUM = "f225ac285dd6cfe0e9bc6ce0d68f4ea32071005a21200f3434337360f20da9d3"
PUBLISHED_SHAPES = {
    "query_tokens": (1, 32, 768),
    "visual_encoder.pos_embed": (1, 257, 1408),
    "visual_encoder.patch_embed.proj.weight": (1408, 3, 14, 14),
    "visual_encoder.blocks.38.attn.qkv.weight": (4224, 1408),
    "visual_encoder.blocks.38.attn.q_bias": (1408,),
    "visual_encoder.blocks.0.mlp.fc1.weight": (6144, 1408),
    "Qformer.bert.embeddings.position_ids": (1, 512),
    "Qformer.bert.encoder.layer.10.crossattention.self.key.weight": (768, 1408),
    "Qformer.bert.encoder.layer.11.output_query.dense.weight": (768, 3072),
    "quantize.embedding.weight": (8192, 32),
    "encode_task_layer.2.weight": (32, 768),
    "decode_task_layer.2.weight": (768, 32),
    "blocks_image.3.attn.qkv.bias": (2304,),
    "image_down.4.weight": (32, 128),
    "distill_image_proj.weight": (1024, 1024),
}


@pytest.fixture(scope="module")
def published() -> SeedTokenizer:
    with torch.device("meta"):
        return SeedTokenizer(SeedConfig.published())


def test_published_keys_and_shapes_match_checkpoint(published):
    state = published.state_dict()
    assert len(state) == PUBLISHED_KEYS
    lines = sorted(f"{k}:{','.join(map(str, v.shape))}" for k, v in state.items())
    assert hashlib.sha256("\n".join(lines).encode()).hexdigest() == PUBLISHED_CHECKSUM
    for key, shape in PUBLISHED_SHAPES.items():
        assert tuple(state[key].shape) == shape, key


def test_published_parameter_count(published):
    assert sum(p.numel() for p in published.parameters()) == PUBLISHED_PARAMETERS
    vit = sum(p.numel() for p in published.visual_encoder.parameters())
    assert vit == PUBLISHED_VIT_PARAMETERS


def test_cross_attention_on_every_second_layer(published):
    layers = published.Qformer.bert.encoder.layer
    assert [layer.has_cross_attention for layer in layers] == [i % 2 == 0 for i in range(12)]


def test_published_shapes_through_encode_and_embed(published):
    with torch.device("meta"):
        codes = published.encode(torch.zeros(1, 3, 224, 224))
        embedding = published.embed(torch.zeros(1, 32, dtype=torch.long))
    assert codes.shape == (1, 32)
    assert codes.dtype == torch.long
    assert embedding.shape == (1, 1024)


@pytest.fixture(scope="module")
def tiny() -> SeedTokenizer:
    return build_tiny_seed(0)


def test_tiny_has_the_published_key_names(tiny, published):
    def pattern(keys):
        return {re.sub(r"\.\d+\.", ".N.", key) for key in keys}

    assert pattern(tiny.state_dict()) == pattern(published.state_dict())


def test_tiny_shapes(tiny):
    pixels = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    codes = tiny.encode(pixels)
    assert codes.shape == (2, 32)
    assert codes.dtype == torch.long
    assert int(codes.min()) >= 0
    assert int(codes.max()) < 8192
    assert tiny.embed(codes).shape == (2, tiny.config.image_features_dim)


def test_tiny_build_is_deterministic(tiny):
    again = build_tiny_seed(0)
    for key, value in tiny.state_dict().items():
        assert torch.equal(value, again.state_dict()[key]), key


def test_query_attention_is_causal(tiny):
    """Query i sees queries 0..i only: changing query 5 leaves outputs 0..4 unchanged."""
    image = torch.randn(1, 257, tiny.config.vit_width, generator=torch.Generator().manual_seed(1))
    queries = tiny.query_tokens.clone()
    before = tiny.Qformer(queries, image)
    queries[:, 5] += 1.0
    after = tiny.Qformer(queries, image)
    torch.testing.assert_close(before[:, :5], after[:, :5])
    assert not torch.allclose(before[:, 5:], after[:, 5:])


def test_quantizer_picks_nearest_entry(tiny):
    codebook = tiny.quantize.embedding.weight
    z = codebook[[3, 4000, 8191]].unsqueeze(0) + 1e-4
    assert tiny.quantize(z).tolist() == [[3, 4000, 8191]]
    brute = torch.cdist(z[0], codebook).argmin(dim=1)
    assert brute.tolist() == [3, 4000, 8191]


def test_published_config_is_bert_base():
    config = SeedConfig.published()
    assert (config.qformer_hidden, config.qformer_layers, config.qformer_heads) == (768, 12, 12)
    assert config.qformer_intermediate == 3072
    assert config.vit_mlp_hidden == int(1408 * 4.3637)
    assert math.isclose(config.qformer_layer_norm_eps, 1e-12)
