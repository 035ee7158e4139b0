"""`anygpt model extend`: add AnyGPT's role and modality tokens to a LLaMA-family base model."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from anygpt_core.plugins import PluginSet

__all__ = ["register"]


def register(app: typer.Typer, plugins: PluginSet) -> None:
    """Add the `model` command group."""
    group = typer.Typer(help="Prepare language models for AnyGPT.", no_args_is_help=True)
    app.add_typer(group, name="model")

    @group.command("extend")
    def extend_command(
        base: Annotated[str, typer.Argument(help="Base LLaMA-family model: directory or hub id.")],
        out: Annotated[Path, typer.Argument(help="New directory for the extended model.")],
        *,
        modality: Annotated[
            list[str] | None,
            typer.Option(
                "--modality",
                "-m",
                metavar="NAME",
                help="Modality whose tokens to add (repeatable).",
            ),
        ] = None,
        chat_tokens: Annotated[
            bool,
            typer.Option("--chat-tokens", help="Also add <-Res-> and <-Ins-> (SFT adds them)."),
        ] = False,
    ) -> None:
        """Add the role tokens and each modality's codes, start and end, in the canonical order.

        New embedding rows start at the mean of the old ones; tokens the model already has keep
        their ids, so an extended model can be extended again with one more modality.
        """
        from anygpt_cli.console import stderr, stdout
        from anygpt_core.training.extend import CHAT_TOKENS, check_base, extend_model

        specs = [plugins.modality(name) for name in dict.fromkeys(modality or [])]
        check_base(base)
        with stderr.status("Extending the vocabulary and embeddings…"):
            result = extend_model(base, out, specs, extra_tokens=CHAT_TOKENS if chat_tokens else ())
        names = ", ".join(s.name for s in specs) or "role tokens only"
        stdout.print(
            f"[green]wrote[/green] {result.directory}: {len(result.added)} tokens added "
            f"({result.present} already present; {names}); vocabulary {result.vocab_size}"
        )
