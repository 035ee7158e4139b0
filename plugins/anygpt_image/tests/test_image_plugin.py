import subprocess
import sys

from anygpt_image.plugin import IMAGE, anygpt_demo_assets, anygpt_modalities

from anygpt_core.plugins import discover


def test_entry_point_is_discovered():
    plugins = discover(load_only=["image"])
    assert plugins.modality("image") is IMAGE or plugins.modality("image") == IMAGE
    info = next(i for i in plugins.infos if i.name == "image")
    assert info.state == "loaded"
    assert info.distribution == "anygpt-image"


def test_hook_anygpt_modalities():
    (spec,) = anygpt_modalities()
    assert spec.name == "image"
    assert spec.prefix == "👀"
    assert (spec.start, spec.end) == ("<soim>", "<eoim>")
    assert (spec.codebook_size, spec.num_codebooks, spec.fixed_frames) == (8192, 1, 32)
    assert spec.token_strings()[:2] == ["<👀0>", "<👀1>"]
    assert spec.token_strings()[-3:] == ["<👀8191>", "<soim>", "<eoim>"]
    assert spec.output_extension == ".jpg"


def test_decoding_defaults_are_reference_effective_values():
    d = IMAGE.decoding
    assert (d.temperature, d.top_p, d.top_k, d.do_sample) == (1.0, 1.0, 50, True)
    assert (d.max_new_tokens, d.min_new_tokens) == (200, 0)


def test_options_are_prefixed_and_defaults():
    defaults = {o.name: o.default for o in IMAGE.options}
    assert all(o.flag.startswith("--image-") for o in IMAGE.options)
    assert defaults["image_tokenizer_path"] == "AILab-CVC/seed-tokenizer-2"
    assert defaults["image_decoder_path"] == "stabilityai/stable-diffusion-2-1-unclip"
    assert defaults["image_steps"] == 20
    assert defaults["image_guidance_scale"] == 10.0
    assert defaults["image_low_memory"] is False


def test_instructions_are_our_own_and_varied():
    for phrases in (IMAGE.instructions.to_text, IMAGE.instructions.from_text):
        assert len(phrases) >= 20
        assert len(set(phrases)) == len(phrases)
    assert "Describe the scene in this picture." not in IMAGE.instructions.to_text
    assert "What image comes to mind from this text?" not in IMAGE.instructions.from_text


def test_plugin_import_is_cheap():
    code = (
        "import sys, anygpt_image.plugin; "
        "print(sorted(m for m in ('torch', 'diffusers', 'transformers') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_hook_anygpt_demo_assets(tmp_path):
    values = anygpt_demo_assets(tmp_path)
    assert set(values) == {"image_tokenizer_path", "image_vit_path", "image_decoder_path"}
    assert (tmp_path / "seed-tokenizer-2" / "seed_quantizer.pt").is_file()
    assert (tmp_path / "eva_vit_g.pth").is_file()
    assert (tmp_path / "stable-diffusion-2-1-unclip" / "model_index.json").is_file()


def test_demo_assets_are_deterministic(tmp_path, demo_options):
    from pathlib import Path

    anygpt_demo_assets(tmp_path)
    ours = tmp_path / "seed-tokenizer-2" / "seed_quantizer.pt"
    theirs = Path(demo_options["image_tokenizer_path"]) / "seed_quantizer.pt"
    import torch

    a, b = torch.load(ours, weights_only=True), torch.load(theirs, weights_only=True)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
