"""A plugin whose modality reuses the toy's prefix."""

from anygpt_core import DecodingConfig, Instructions, ModalitySpec, hookimpl


@hookimpl
def anygpt_modalities():
    return [
        ModalitySpec(
            name="clash",
            prefix="🧪",
            start="<socl>",
            end="<eocl>",
            codebook_size=4,
            decoding=DecodingConfig(),
            output_extension=".txt",
            instructions=Instructions(to_text=("a",), from_text=("b",)),
            codec_factory=lambda options: None,
        )
    ]
