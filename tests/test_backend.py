from __future__ import annotations

import pytest
import torch
from cli_runner import tiny_llama

from anygpt_core.engine.backends import LlamaBackend, TransformersBackend, make_backend


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_lean_llama_path_equals_transformers_hidden_states(dtype):
    model = tiny_llama().to(dtype)  # the published models run in float16
    lean, generic = LlamaBackend(model), TransformersBackend(model)
    prompt = torch.randint(0, 300, (9,), generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        (s1, a), (s2, b) = lean.prefill([prompt]), generic.prefill([prompt])
        torch.testing.assert_close(a, b, rtol=0, atol=0)
        for token in (5, 17, 299, 0):
            step = torch.tensor([token])
            a, b = lean.step(s1, step), generic.step(s2, step)
            torch.testing.assert_close(a, b, rtol=0, atol=0)
            torch.testing.assert_close(lean.project(a), generic.project(b), rtol=0, atol=1e-5)
        full = model(torch.cat([prompt, torch.tensor([5, 17, 299, 0])])[None]).logits[:, -1]
        # a whole-sequence forward rounds differently from cached steps in half precision
        atol = 1e-5 if dtype == torch.float32 else 2e-3
        torch.testing.assert_close(lean.project(a), full.float(), rtol=0, atol=atol)


def test_lean_path_stays_exact_as_its_cache_and_rotary_tables_grow():
    """Past the first 256 positions the KV buffers and cos/sin tables are regrown: still bitwise."""
    model = tiny_llama(max_position_embeddings=1024)
    lean, generic = LlamaBackend(model), TransformersBackend(model)
    prompt = torch.randint(0, 300, (250,), generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():
        (s1, a), (s2, b) = lean.prefill([prompt]), generic.prefill([prompt])
        torch.testing.assert_close(a, b, rtol=0, atol=0)
        for token in range(12):  # positions 250..261 cross the first capacity of 256
            step = torch.tensor([token * 7])
            torch.testing.assert_close(lean.step(s1, step), generic.step(s2, step), rtol=0, atol=0)
    assert s1.length == 262 and lean._tables[0].shape[0] >= 262


@pytest.mark.parametrize("kind", [LlamaBackend, TransformersBackend])
def test_a_left_padded_batch_gives_each_row_its_hidden_states_alone(kind):
    """Prompts of different lengths, left-padded with per-row positions: each row's hidden states
    match the row run alone, step after step, also after finished rows leave the batch."""
    model = tiny_llama()
    backend = kind(model)
    gen = torch.Generator().manual_seed(4)
    prompts = [torch.randint(0, 300, (n,), generator=gen) for n in (3, 11, 7)]
    steps = torch.randint(0, 300, (6, 3), generator=gen)
    with torch.inference_mode():
        alone = []
        for row, prompt in enumerate(prompts):
            session, hidden = backend.prefill([prompt])
            states = [hidden[0]]
            for t in range(steps.shape[0]):
                states.append(backend.step(session, steps[t, row : row + 1])[0])
            alone.append(states)
        session, hidden = backend.prefill(prompts)
        rows = [0, 1, 2]
        for t in range(steps.shape[0] + 1):
            for i, row in enumerate(rows):
                torch.testing.assert_close(hidden[i], alone[row][t], rtol=0, atol=1e-5)
            if t == steps.shape[0]:
                break
            if t == 3:  # row 1 finished: the batch goes on without it
                rows = [0, 2]
                backend.select(session, torch.tensor([0, 2]))
            hidden = backend.step(session, steps[t, rows])


def test_unsupported_configurations_take_the_generic_path():
    assert isinstance(make_backend(tiny_llama()), LlamaBackend)
    grouped = tiny_llama(num_key_value_heads=2)
    assert type(make_backend(grouped)) is TransformersBackend
    assert type(make_backend(tiny_llama(attention_bias=True))) is TransformersBackend


def test_projection_of_row_subsets():
    backend = LlamaBackend(tiny_llama())
    hidden = torch.randn(2, 32)
    full = backend.project(hidden)
    ids = torch.tensor([7, 3, 250])
    torch.testing.assert_close(backend.project(hidden, slice(10, 20)), full[:, 10:20])
    torch.testing.assert_close(backend.project(hidden, ids), full[:, ids])
    torch.testing.assert_close(backend.project(hidden, backend.head(ids)), full[:, ids])


def test_the_published_model_takes_the_lean_path(tmp_path):
    """fnlp/AnyGPT-base's config.json (LLaMA-2-7B, as transformers 4.34 wrote it), at real size
    on the meta device: the lean exact path applies to it, not only to the demo."""
    import json

    from transformers import AutoConfig, AutoModelForCausalLM

    config = {
        "architectures": ["LlamaForCausalLM"],
        "bos_token_id": 1,
        "eos_token_id": 2,
        "hidden_act": "silu",
        "hidden_size": 4096,
        "initializer_range": 0.02,
        "intermediate_size": 11008,
        "max_position_embeddings": 4096,
        "model_type": "llama",
        "num_attention_heads": 32,
        "num_hidden_layers": 32,
        "num_key_value_heads": 32,
        "pad_token_id": 0,
        "pretraining_tp": 1,
        "rms_norm_eps": 1e-05,
        "rope_scaling": None,
        "rope_theta": 10000.0,
        "tie_word_embeddings": False,
        "torch_dtype": "float16",
        "transformers_version": "4.34.1",
        "use_cache": True,
        "vocab_size": 49418,
    }
    (tmp_path / "config.json").write_text(json.dumps(config))
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(tmp_path)).eval()
    assert sum(p.numel() for p in model.parameters()) == 6_881_103_872  # 7B + 2 x 17,418 rows
    backend = make_backend(model)
    assert isinstance(backend, LlamaBackend)
    assert backend.heads == 32 and backend.head_dim == 128 and len(backend.layers) == 32


def test_stacking_shares_the_models_memory():
    """The stacked q/k/v and gate/up matrices are the model's own weights, not copies."""
    model = tiny_llama()
    before = {name: p.detach().clone() for name, p in model.named_parameters()}

    def held_bytes(*extra):
        tensors = [*model.parameters(), *extra]
        return sum(
            {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors}.values()
        )

    total = held_bytes()
    backend = LlamaBackend(model)
    stacked = [t for layer in backend.layers for t in (layer[1], layer[4])]
    assert held_bytes(*stacked) == total  # model and backend together hold no second copy
    after = dict(model.named_parameters())
    assert all(torch.equal(before[name], after[name]) for name in before)


@pytest.mark.parametrize("kind", [LlamaBackend, TransformersBackend])
def test_the_cache_narrows_to_the_rows_left_after_a_long_row_leaves(kind):
    """A row that joins a long-running batch is right-aligned to its width; once the long row
    leaves, the columns nobody holds a token in are dropped, and the row's states are unchanged."""
    model = tiny_llama()
    backend = kind(model)

    def width(session):
        return session.length if kind is LlamaBackend else session.cache.get_seq_length()

    gen = torch.Generator().manual_seed(5)
    long, short = (
        torch.randint(0, 300, (60,), generator=gen),
        torch.randint(0, 300, (4,), generator=gen),
    )
    steps = torch.randint(0, 300, (8,), generator=gen)
    with torch.inference_mode():
        session, hidden = backend.prefill([short])
        alone = [hidden[0]] + [backend.step(session, steps[t : t + 1])[0] for t in range(8)]
        batch, _ = backend.prefill([long])
        for t in range(20):
            backend.step(batch, torch.tensor([t]))
        newcomer, hidden = backend.prefill([short])
        backend.join(batch, newcomer)
        assert width(batch) == 80
        hidden = backend.step(batch, torch.tensor([1, int(steps[0])]))
        torch.testing.assert_close(hidden[1], alone[1], rtol=0, atol=1e-5)
        backend.select(batch, torch.tensor([1]))  # the long row ends
        assert width(batch) == 4 + 1 and batch.valid.all()
        for t in range(1, 8):
            hidden = backend.step(batch, steps[t : t + 1])
            torch.testing.assert_close(hidden[0], alone[t + 1], rtol=0, atol=1e-5)
        assert width(batch) == 4 + 8
