"""`anygpt chat`: a multimodal conversation at a terminal, or a scripted one from stdin."""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from anygpt_cli.catalogue import KNOWN_PLUGINS
from anygpt_cli.common import (
    ChatTemplate,
    DecodingFlags,
    ModelChoice,
    check_template,
    load_model,
    stdin_lines,
)
from anygpt_cli.options import with_codec_options
from anygpt_core.errors import AnyGPTError, InputError
from anygpt_core.files import check_input_file, check_output_dir

if TYPE_CHECKING:
    from anygpt_cli.chat_lines import ChatLine
    from anygpt_core.chat import Conversation, Reply, TurnEvent
    from anygpt_core.engine.events import Event
    from anygpt_core.plugins import PluginSet

__all__ = ["register"]

HELP = """Chat with the model: a conversation whose turns mix text, images, speech and music.

Each line is one message: plain text, or the seed's format
interleaved|TEXT|MODALITY|IMAGE|VOICE_PROMPT|SPEECH|MUSIC
(the field order of the seed's README; the seed's code reads VOICE_PROMPT before IMAGE, and both
orders work: an image and a voice prompt are told apart by the files' content). MODALITY is the
answer's modality (default text); path fields take comma-separated lists; a spoken instruction is
wrapped in the reference's Speech-Instruction prompt, and a spoken answer uses the voice prompt.
'|clear' or '/clear' empties the history; 'quit' or '/exit' leaves.

Commands: '/image PATH', '/speech PATH', '/music PATH' (or '/MODALITY PATH' for any installed
modality) attach files to the next message; '/send' sends attachments without text; '/to MODALITY'
sets the answer modality; '/voice PATH' sets the voice of spoken answers ('/voice' alone clears
it); '/history'; '/help'; '/exit'.

Text answers sample with top-k 50, up to 500 new tokens (the seed chat's budget), and stream as
they are written; the seed's chat sampled 5 beams (its generate_config.json): --num-beams 5, or
--config with that file, does so too, and the answer then comes at once. The oldest turns are
cut, with a notice, when the conversation outgrows the model's context. Without a terminal, lines
are read from stdin (anygpt chat < script.txt); --json prints one object per turn.
"""

COMMANDS = """/image PATH[,PATH] · /speech PATH · /music PATH · /MODALITY PATH  attach to the next message
/send  send the attachments without text      /to MODALITY  answer modality (now: {to})
/voice [PATH]  voice of spoken answers          /clear  empty the history
/history  show the conversation                 /exit  leave (also Ctrl-D)
or a line interleaved|TEXT|MODALITY|IMAGE|VOICE_PROMPT|SPEECH|MUSIC"""


_To = Annotated[str, typer.Option("--to", help="Answer modality of plain lines (change with /to).")]


def register(app: typer.Typer, plugins: PluginSet) -> None:
    """Add the `chat` command with the installed plugins' options."""

    @app.command("chat", help=HELP)
    @with_codec_options(plugins.options(), plugins.option_panels())
    @ModelChoice.options(output_dir=True)
    @DecodingFlags.options()
    def chat_command(
        *,
        model: ModelChoice,
        chat_template: ChatTemplate = "mmgpt",
        to: _To = "text",
        decoding: DecodingFlags,
        as_json: Annotated[bool, typer.Option("--json", help="One JSON object per turn.")] = False,
        codec_options: dict[str, Any],
    ) -> None:
        from anygpt_core.chat import Conversation

        check_template(chat_template)
        to = to.strip().lower()
        if to != "text":
            plugins.modality(to)
        model.check()  # an unknown mode fails before loading
        decoding.check(plugins)  # a bad file or flag value fails before the model loads
        check_output_dir(model.output_dir)  # before the model loads, not at the first media answer
        gpt = load_model(plugins, model, codec_options=codec_options)
        conversation = Conversation(
            gpt, template=chat_template, config=decoding.config, **decoding.overrides
        )
        session = _Session(conversation, to=to, seed=decoding.seed, as_json=as_json)
        failures = session.loop()
        if failures and not session.interactive:
            raise typer.Exit(1)


class _Session:
    """The read-send-print loop: commands, pending attachments, streaming and errors."""

    def __init__(
        self, conversation: Conversation, *, to: str, seed: int | None, as_json: bool
    ) -> None:
        from anygpt_cli.console import stderr

        self.conversation = conversation
        self.to = to
        self.seed = seed
        self.as_json = as_json
        self.voice: Path | None = None
        self.pending: dict[str, list[Path]] = {}
        self.interactive = sys.stdin.isatty()
        self.live = stderr.is_terminal and not as_json
        self.turns = 0

    def loop(self) -> int:
        """Handle lines until exit or end of input; return how many lines failed."""
        from anygpt_cli.console import stderr

        if self.interactive:
            with contextlib.suppress(ImportError):
                import readline  # noqa: F401 - line editing and history for input()
            stderr.print("[dim]anygpt chat: /help for commands, /exit or Ctrl-D to leave[/dim]")
        failures = 0
        for line in self._lines():
            try:
                if not self._handle(line):
                    break
            except AnyGPTError as err:
                failures += 1
                _error(str(err))
            except KeyboardInterrupt:  # Ctrl-C while a line is handled: drop it, stay
                if not self.interactive:
                    raise
                stderr.print("\n[yellow]interrupted[/yellow]")
        return failures

    def _lines(self) -> Iterator[str]:
        if not self.interactive:
            for line in stdin_lines():
                if line.strip():
                    yield line.strip()
            return
        while True:
            try:
                line = input(self._prompt())
            except EOFError:
                sys.stdout.write("\n")
                return
            except KeyboardInterrupt:  # Ctrl-C at the prompt drops the line
                sys.stdout.write("\n")
                continue
            if line.strip():
                yield line.strip()

    def _prompt(self) -> str:
        notes = [] if self.to == "text" else [f"to {self.to}"]
        notes += [f"{len(paths)} {name}" for name, paths in self.pending.items()]
        return f"({', '.join(notes)}) > " if notes else "> "

    def _handle(self, line: str) -> bool:
        """Act on one line; False ends the session."""
        from anygpt_cli.chat_lines import parse_line
        from anygpt_core.tasks import require_utf8

        require_utf8(line)  # commands too: such a byte is refused here, and the session goes on
        if line.startswith("/"):
            return self._command(line)
        parsed = parse_line(line)
        if parsed.command == "exit":
            return False
        if parsed.command == "clear":
            self._clear()
            return True
        if parsed.to is None:  # plain text: the session's choices and attachments apply
            parsed = self._with_pending(parsed.text)
        self._send(parsed, line)
        return True

    def _with_pending(self, text: str) -> ChatLine:
        from anygpt_cli.chat_lines import ChatLine

        inputs = {name: tuple(paths) for name, paths in self.pending.items()}
        return ChatLine("send", text=text, to=self.to, inputs=inputs, voice_prompt=self.voice)

    def _command(self, line: str) -> bool:
        from anygpt_cli.console import stderr, stdout

        name, _, argument = line[1:].partition(" ")
        name, argument = name.strip().lower(), argument.strip()
        plugins = self.conversation.gpt.plugins
        if name in {"exit", "quit"}:
            return False
        if name == "clear":
            self._clear()
        elif name == "help":
            stderr.print(COMMANDS.format(to=self.to), markup=False)
        elif name == "history" and self.as_json:
            turns = [vars(turn) for turn in self.conversation.history]
            typer.echo(json.dumps({"history": turns}, ensure_ascii=False))
        elif name == "history":
            stdout.print(self.conversation.render(), markup=False)
        elif name == "to":
            modality = argument.lower() or "text"
            if modality != "text":
                plugins.modality(modality)
                self.conversation.gpt.space.require(modality)
            self.to = modality
            stderr.print(f"[dim]answers in {modality}[/dim]")
        elif name == "voice":
            if argument:
                check_input_file(argument, what="voice prompt")
            self.voice = Path(argument).expanduser() if argument else None
            stderr.print(f"[dim]voice prompt: {self.voice or 'none'}[/dim]", markup=True)
        elif name == "send":
            if not self.pending:
                raise InputError(
                    "/send: nothing attached; attach with /image PATH, /speech PATH, …"
                )
            self._send(self._with_pending(""), line)
        elif name in plugins.modalities or name in KNOWN_PLUGINS:
            self._attach(name, argument)
        else:
            raise InputError(
                f"unknown command /{name}: try /help (attachments: "
                f"{', '.join('/' + m for m in plugins.modalities) or 'no modality plugin installed'})"
            )
        return True

    def _attach(self, modality: str, argument: str) -> None:
        from anygpt_cli.console import stderr

        self.conversation.gpt.plugins.modality(modality)
        self.conversation.gpt.space.require(modality)
        paths = [Path(p.strip()).expanduser() for p in argument.split(",") if p.strip()]
        if not paths:
            raise InputError(f"/{modality}: give a file path")
        for path in paths:
            check_input_file(path)
        self.pending.setdefault(modality, []).extend(paths)
        stderr.print(f"[dim]attached {', '.join(str(p) for p in paths)} ({modality})[/dim]")

    def _clear(self) -> None:
        from anygpt_cli.console import stderr

        self.conversation.clear()
        self.pending = {}
        stderr.print("[dim]history cleared[/dim]")

    def _send(self, parsed: ChatLine, line: str) -> None:
        from anygpt_cli.console import stderr

        output = _Output(live=self.live, stream=not self.as_json)
        to = parsed.to or self.to
        try:
            beams = self.conversation.target_config(to).num_beams if to == "text" else 1
            if beams > 1:
                output.note(f"searching {beams} beams…")  # the answer comes at once, when found
            turn = self.conversation.stream(
                parsed.text,
                inputs=parsed.inputs,
                voice_prompt=parsed.voice_prompt,
                to=to,
                seed=self.seed,
            )
            reply = output.show(turn)
        except KeyboardInterrupt:
            output.end()
            stderr.print("[yellow]interrupted: reply discarded, history unchanged[/yellow]")
            return
        except AnyGPTError:
            output.end()
            raise
        finally:
            self.pending = {}  # attachments go with the message they were sent with
        self.turns += 1
        output.end()
        if reply.dropped:
            stderr.print(
                f"[yellow]the conversation outgrew the context: dropped the {reply.dropped} oldest "
                f"turn{'s' if reply.dropped > 1 else ''}[/yellow]"
            )
        if reply.finish_reason == "length":
            stderr.print(
                "[yellow]reply cut at max_new_tokens; it is closed in the history[/yellow]"
            )
        if self.as_json:
            typer.echo(
                json.dumps(
                    {"turn": self.turns, "input": line, **reply.to_json()}, ensure_ascii=False
                )
            )
        else:
            _summary(reply, self.live)


def _summary(reply: Reply, live: bool) -> None:
    from anygpt_cli.console import stderr, stdout

    for path in reply.files:
        stdout.print(f"[green]wrote[/green] {path}")
    if live:
        stderr.print(
            f"[dim]{reply.new_tokens} tokens in {reply.seconds:.2f} s · {reply.finish_reason} · "
            f"seed {reply.seed}[/dim]"
        )


def _error(message: str) -> None:
    first = message.strip().splitlines()[0] if message.strip() else "error"
    sys.stdout.flush()
    sys.stderr.write(f"Error: {first}\n")
    sys.stderr.flush()


class _Output:
    """Streams an answer's text to stdout; a span shows as `[modality]`, with live progress on stderr."""

    def __init__(self, *, live: bool, stream: bool) -> None:
        self.live = live
        self.stream = stream
        self.span: tuple[str, int] | None = None
        self.count = 0
        self.started = False  # some of this answer is on stdout
        self.line_start = True  # stdout is at the start of a line
        self.strip = True  # drop the leading space of the next piece
        self.noted = False  # a transient status is on stderr

    def note(self, message: str) -> None:
        """A transient status on stderr (live terminals only), cleared by the first output."""
        if self.live:
            sys.stderr.write(f"  {message}")
            sys.stderr.flush()
            self.noted = True

    def _clear_note(self) -> None:
        if self.noted:
            sys.stderr.write("\r\x1b[K")
            sys.stderr.flush()
            self.noted = False

    def text(self, piece: str) -> None:
        self._clear_note()
        if not self.stream:
            return
        if self.strip:
            piece = piece.lstrip()
        if piece:
            typer.echo(piece, nl=False)
            self.started, self.strip = True, False
            self.line_start = piece.endswith("\n")

    def _marker(self, modality: str) -> None:
        self.text(f"[{modality}] " if self.line_start else f" [{modality}] ")
        self.strip = True

    def show(self, turn: Iterator[TurnEvent]) -> Reply:
        """Show a turn's stream as it comes; its reply."""
        from anygpt_core.chat import AudioChunk, MediaReady, Reply, TextPiece

        for item in turn:
            if isinstance(item, TextPiece):
                self.text(item.text)
            elif isinstance(item, Reply):
                return item
            elif not isinstance(item, MediaReady | AudioChunk):
                self.event(item)
        raise AssertionError("a turn's stream ends with its reply")  # pragma: no cover

    def event(self, event: Event) -> None:
        from anygpt_core.engine.events import SpanClosed, SpanOpened, TokenEvent

        if isinstance(event, SpanOpened):
            self.span, self.count = (event.modality, event.max_tokens), 0
            if not self.live:
                self._marker(event.modality)
            elif self.stream and not self.line_start:
                typer.echo("")
                self.line_start = True
        elif isinstance(event, TokenEvent) and event.modality is not None and self.span is not None:
            self.count += 1
            if self.live and self.count % 20 == 1:
                sys.stderr.write(f"\r  writing {self.span[0]}: {self.count}/{self.span[1]} tokens")
                sys.stderr.flush()
        elif isinstance(event, SpanClosed):
            self.span = None
            if self.live:
                sys.stderr.write("\r\x1b[K")
                sys.stderr.flush()
                self._marker(event.modality)

    def end(self) -> None:
        """Finish the answer's line (also after an error or an interruption)."""
        self._clear_note()
        if self.live and self.span is not None:
            sys.stderr.write("\r\x1b[K")
            sys.stderr.flush()
        if self.stream and self.started and not self.line_start:
            typer.echo("")
        self.started, self.span, self.line_start, self.strip = False, None, True, True
