"""Parity of our EVA-ViT-g and causal Q-Former with transformers' BLIP-2 modules on the same weights.

transformers' `Blip2VisionModel` is EVA-ViT-g with a fused `qkv.bias` (= q_bias, zeros, v_bias) and
`Blip2QFormerModel` is the same Q-Former without SEED's causal query mask, which we pass as a 4-D mask.
"""

import pytest
import torch
from anygpt_image.demo import build_tiny_seed

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def tiny():
    return build_tiny_seed(0)


def test_vit_matches_transformers_blip2_vision(tiny):
    c = tiny.config
    config = transformers.Blip2VisionConfig(
        hidden_size=c.vit_width, intermediate_size=c.vit_mlp_hidden, num_hidden_layers=c.vit_depth,
        num_attention_heads=c.vit_heads, image_size=c.image_size, patch_size=c.patch_size,
        layer_norm_eps=1e-6, qkv_bias=True, hidden_act="gelu",
    )  # fmt: skip
    theirs = transformers.Blip2VisionModel(config).eval()
    ours = tiny.visual_encoder.state_dict()
    mapped = {
        "embeddings.class_embedding": ours["cls_token"],
        "embeddings.position_embedding": ours["pos_embed"],
        "embeddings.patch_embedding.weight": ours["patch_embed.proj.weight"],
        "embeddings.patch_embedding.bias": ours["patch_embed.proj.bias"],
    }
    for i in range(c.vit_depth):
        a, b = f"blocks.{i}.", f"encoder.layers.{i}."
        q, v = ours[a + "attn.q_bias"], ours[a + "attn.v_bias"]
        mapped |= {
            b + "self_attn.qkv.weight": ours[a + "attn.qkv.weight"],
            b + "self_attn.qkv.bias": torch.cat((q, torch.zeros_like(q), v)),
            b + "self_attn.projection.weight": ours[a + "attn.proj.weight"],
            b + "self_attn.projection.bias": ours[a + "attn.proj.bias"],
        }
        for name in ("mlp.fc1", "mlp.fc2"):
            for kind in ("weight", "bias"):
                mapped[f"{b}{name}.{kind}"] = ours[f"{a}{name}.{kind}"]
        for mine, hf in (("norm1", "layer_norm1"), ("norm2", "layer_norm2")):
            for kind in ("weight", "bias"):
                mapped[f"{b}{hf}.{kind}"] = ours[f"{a}{mine}.{kind}"]
    missing = theirs.load_state_dict(mapped, strict=False).missing_keys
    assert set(missing) <= {"post_layernorm.weight", "post_layernorm.bias"}
    pixels = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = theirs(pixels, output_hidden_states=True).hidden_states[-1]
        torch.testing.assert_close(tiny.visual_encoder(pixels), expected, rtol=1e-4, atol=1e-4)


def test_qformer_matches_transformers_blip2_qformer_with_causal_mask(tiny):
    c = tiny.config
    config = transformers.Blip2QFormerConfig(
        hidden_size=c.qformer_hidden, num_hidden_layers=c.qformer_layers,
        num_attention_heads=c.qformer_heads, intermediate_size=c.qformer_intermediate,
        encoder_hidden_size=c.vit_width, cross_attention_frequency=c.cross_attention_freq,
        layer_norm_eps=c.qformer_layer_norm_eps, hidden_act="gelu",
    )  # fmt: skip
    theirs = transformers.Blip2QFormerModel(config).eval()
    mapped = {}
    for key, value in tiny.Qformer.bert.state_dict().items():
        if key.endswith("position_ids"):
            continue
        key = key.replace("embeddings.LayerNorm", "layernorm").replace(".self.", ".attention.")
        mapped[key] = value
    result = theirs.load_state_dict(mapped, strict=False)
    assert not result.missing_keys
    assert not result.unexpected_keys
    generator = torch.Generator().manual_seed(1)
    image = torch.randn(2, 257, c.vit_width, generator=generator)
    queries = torch.randn(2, 32, c.qformer_hidden, generator=generator)
    causal = torch.ones(32, 32, dtype=torch.bool).tril().expand(2, 1, 32, 32)
    with torch.no_grad():
        expected = theirs(
            query_embeds=queries, encoder_hidden_states=image, attention_mask=causal
        ).last_hidden_state
        torch.testing.assert_close(tiny.Qformer(queries, image), expected, rtol=1e-4, atol=1e-4)
