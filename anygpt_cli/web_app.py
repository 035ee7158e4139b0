"""The page behind `anygpt web`: a chat tab and a tasks tab over one loaded `AnyGPT`.

Each browser tab is a Gradio session with its own `Conversation`; every session's generation goes
through the model's shared engine (`gpt.engine`), which batches them, so several tabs share one
loaded model. The page fetches nothing from outside: analytics are off and the theme uses the
fonts Gradio ships and the system's.

```python
gpt = AnyGPT.load()
page = WebApp(gpt, output_dir=Path("anygpt_output"))
url = page.launch(host="127.0.0.1", port=7860, block=False)
```
"""

from __future__ import annotations

import inspect
import io
import os
import re
import shutil
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

from anygpt_core.errors import AnyGPTError, InputError, PluginError, first_line

if TYPE_CHECKING:
    from anygpt_core.api import AnyGPT
    from anygpt_core.chat import Conversation, Reply

__all__ = ["ONE_SHOT_TASKS", "OneShot", "Sessions", "WebApp", "import_gradio"]

#: Set before Gradio is imported: no analytics or version checks, nothing fetched from a hub.
OFFLINE_ENVIRONMENT = {
    "GRADIO_ANALYTICS_ENABLED": "False",
    "HF_HUB_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
}
#: The modality of spoken instructions and voice prompts (recorded from the microphone).
SPEECH = "speech"
#: Suffixes offered for image uploads when the plugin lists none.
_IMAGE_TYPES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif")
#: How often streamed text and span progress refresh the page, at most.
_REFRESH_SECONDS = 0.1
#: The demo draws 32x32 images: answers' images are shown at least 192 px wide, pixels kept sharp.
_CSS = "#chat img { min-width: 192px; image-rendering: pixelated; }"


def import_gradio() -> ModuleType:
    """Gradio, imported with analytics and network look-ups off.

    Raises:
        PluginError: Gradio is not installed (it comes with the `web` extra).
    """
    for name, value in OFFLINE_ENVIRONMENT.items():
        os.environ[name] = value
    try:
        import gradio
    except ImportError as err:
        raise PluginError(
            "anygpt web needs Gradio: pip install 'gradio>=6,<7'"
            + (f" ({err})" if "gradio" not in str(err) else "")
        ) from None
    return gradio


@dataclass(frozen=True)
class OneShot:
    """A one-shot task of the base model's protocol, offered in the tasks tab when installed."""

    key: str
    title: str
    source: str
    target: str
    hint: str


#: The seed's one-shot tasks, in the tasks tab's order.
ONE_SHOT_TASKS = (
    OneShot("text-image", "Text → image", "text", "image", "a red bus at dawn"),
    OneShot("image-text", "Image captioning", "image", "text", ""),
    OneShot("text-speech", "Text → speech", "text", "speech", "Hello there, nice to meet you."),
    OneShot("speech-text", "Speech recognition", "speech", "text", ""),
    OneShot("text-music", "Text → music", "text", "music", "a calm piano piece"),
    OneShot("music-text", "Music captioning", "music", "text", ""),
)


@dataclass
class _Tab:
    """One browser tab's conversation; `lock` lets one turn run at a time; `sent` counts messages.

    `running` says a turn is being answered (Clear holds `lock` too); `stop` is set by the Stop
    button while it runs; `kept` says whether the last turn's answer reached the conversation (it
    had ended before Stop took effect).
    """

    conversation: Conversation
    lock: threading.Lock = field(default_factory=threading.Lock)
    sent: int = 0
    running: bool = False
    stop: threading.Event = field(default_factory=threading.Event)
    kept: bool = False

    def begin(self) -> str:
        """A new turn (the caller holds `lock`): its number as the status line shows it."""
        self.stop.clear()
        self.kept = False
        self.running = True
        self.sent += 1
        return f"(message {self.sent})"


class Sessions:
    """One `Conversation` per browser tab, all over one `AnyGPT` (and so one engine).

    Args:
        gpt: the loaded model, shared by every tab.
        output_dir: where answers' media files are written.
        template: the chat template's name (`mmgpt` or `anygpt`).
        config: a decoding config JSON applied to each turn's answer modality.
        overrides: decoding fields (e.g. `max_new_tokens`) applied last.
    """

    def __init__(
        self,
        gpt: AnyGPT,
        *,
        output_dir: Path,
        template: str = "mmgpt",
        config: Path | None = None,
        overrides: Mapping[str, Any] | None = None,
    ) -> None:
        self.gpt = gpt
        self.output_dir = output_dir
        self.template = template
        self.config = config
        self.overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
        self._tabs: dict[str, _Tab] = {}
        self._lock = threading.Lock()

    def tab(self, key: str) -> _Tab:
        """The tab's conversation, started on its first message."""
        from anygpt_core.chat import Conversation

        with self._lock:
            if key not in self._tabs:
                conversation = Conversation(
                    self.gpt,
                    template=self.template,
                    output_dir=self.output_dir,
                    config=self.config,
                    **self.overrides,
                )
                self._tabs[key] = _Tab(conversation)
            return self._tabs[key]

    def drop(self, key: str) -> None:
        """Forget a closed tab's conversation."""
        with self._lock:
            self._tabs.pop(key, None)

    def __len__(self) -> int:
        with self._lock:
            return len(self._tabs)


def _bar(done: int, total: int, width: int = 20) -> str:
    filled = min(width, round(width * done / total)) if total else 0
    return "▰" * filled + "▱" * (width - filled)


def _short(message: str, files: Sequence[str]) -> str:
    """`message` with uploaded files' temporary folders cut, so it names the file as uploaded."""
    for name in files:
        folder = str(Path(name).parent)
        if folder not in {"", "."}:
            message = message.replace(folder + os.sep, "")
    return message


def _session(request: Any) -> str:  # noqa: ANN401 - gr.Request
    """The browser tab's Gradio session key."""
    return str(getattr(request, "session_hash", None) or "")


def _wants_request(handler: Callable[..., Any], request_type: type) -> None:
    """Mark `handler`'s `request` parameter as Gradio's Request, so Gradio passes the request.

    Gradio reads the annotation's object; this module's annotations are strings (postponed), and
    Gradio is imported only when the page is built.
    """
    handler.__annotations__ = {**handler.__annotations__, "request": request_type}


def _name_parameters(handler: Callable[..., Any], names: Sequence[str]) -> None:
    """Give `handler(request, *values)` the parameters `names`, each optional (default None).

    Gradio names an endpoint's parameters after its function's (gradio_client's `view_api()`,
    `/gradio_api/info`; `param_0`, ... otherwise), and a parameter whose component starts empty
    may be left out of a call only when its default is None.
    """
    kind = inspect.Parameter.POSITIONAL_OR_KEYWORD
    parameters = [inspect.Parameter("request", kind)]
    parameters += [inspect.Parameter(name, kind, default=None) for name in names]
    handler.__signature__ = inspect.Signature(parameters)  # type: ignore[attr-defined]


def _input_parameter(modality: str) -> str:
    """The chat endpoint's parameter of a modality's attachments: `image_files`, ..."""
    if modality == SPEECH:
        return "spoken_instruction"
    return re.sub(r"\W", "_", modality) + "_files"


def _paths(value: Any) -> list[str]:  # noqa: ANN401 - a Gradio file value: None, a path or a list
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        return [str(v) for v in value if v]
    return [str(value)] if value else []


def _wav(samples: Any, rate: int) -> bytes:  # noqa: ANN401 - float32 torch [n]
    """A 16-bit wav file of float samples: one piece of a streamed spoken answer."""
    import numpy as np
    import soundfile

    buffer = io.BytesIO()
    array = np.asarray(samples.detach().cpu(), dtype=np.float32)
    soundfile.write(buffer, array, rate, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


class _Progress:
    """What the page shows while a chat turn is written: the text so far and a status line."""

    def __init__(self) -> None:
        self.streamed = ""
        self.span = ""
        self.count = 0
        self.total = 0
        self.last = 0.0  # when the page was last refreshed

    def answer(self) -> dict[str, Any]:
        """The answer so far, as the chat's assistant message."""
        return {"role": "assistant", "content": self.streamed.strip() or "…"}

    def status(self, item: object) -> str | None:
        """Take one item of the turn's stream; a new status line, or None."""
        from anygpt_core.chat import MediaReady, TextPiece
        from anygpt_core.engine.events import Done, SpanClosed, SpanOpened, TokenEvent

        if isinstance(item, TextPiece):
            self.streamed += item.text
        elif isinstance(item, SpanOpened):
            self.span, self.count, self.total = item.modality, 0, item.max_tokens
            return f"Writing {self.span}…"
        elif isinstance(item, TokenEvent) and item.modality is not None:
            self.count += 1
            bar = _bar(self.count, self.total)
            return f"Writing {self.span}: {bar} {self.count}/{self.total} tokens"
        elif isinstance(item, SpanClosed):
            self.streamed += f" [{item.modality}] "
            return f"Decoding the {item.modality} span…"
        elif isinstance(item, MediaReady):
            return f"Wrote a {item.span.modality} span"
        elif isinstance(item, Done):
            return "Finishing…"
        return None

    def due(self, status: str | None) -> bool:
        """Whether to refresh the page: at a new status, or at most every `_REFRESH_SECONDS`."""
        now = time.monotonic()
        if now - self.last < _REFRESH_SECONDS and status is None:
            return False
        self.last = now
        return True


class WebApp:
    """The Gradio page over one loaded model.

    Args:
        gpt: the loaded model.
        output_dir: where media answers are written (served to the page from there).
        template: the chat template (`mmgpt` or `anygpt`).
        config: a decoding config JSON applied to chat answers.
        seed: the chat tab's default seed (None: a new one per turn).
        overrides: decoding fields for chat answers (`max_new_tokens`, `temperature`, ...).
    """

    def __init__(
        self,
        gpt: AnyGPT,
        *,
        output_dir: Path,
        template: str = "mmgpt",
        config: Path | None = None,
        seed: int | None = None,
        overrides: Mapping[str, Any] | None = None,
    ) -> None:
        self.gr = import_gradio()
        self.gpt = gpt
        self.output_dir = Path(output_dir)
        self.seed = seed
        self.sessions = Sessions(
            gpt, output_dir=self.output_dir, template=template, config=config, overrides=overrides
        )
        #: modalities this model reads and writes, in the plugins' order
        self.modalities = [name for name in gpt.plugins.modalities if name in gpt.space.modalities]
        #: spoken answers play as they are decoded (Gradio streams audio through ffmpeg)
        self.speaks = SPEECH in self.modalities and shutil.which("ffmpeg") is not None
        self.blocks = self._build()

    # --- layout ------------------------------------------------------------------------------

    def theme(self) -> Any:  # noqa: ANN401 - a gradio Theme
        """Gradio's default look with the fonts it ships and system fonts: nothing fetched."""
        themes = self.gr.themes
        return themes.Default(
            font=[themes.LocalFont("IBM Plex Sans"), "ui-sans-serif", "system-ui", "sans-serif"],
            font_mono=[themes.LocalFont("IBM Plex Mono"), "ui-monospace", "monospace"],
        )

    def _types(self, modality: str) -> list[str] | None:
        spec = self.gpt.plugins.modalities[modality]
        suffixes = list(spec.input_extensions) or (
            list(_IMAGE_TYPES) if modality == "image" else []
        )
        return suffixes or None

    def _build(self) -> Any:  # noqa: ANN401 - gr.Blocks
        gr = self.gr
        # the files Gradio keeps (uploads, copies of answers it serves) go after a day
        with gr.Blocks(
            title="AnyGPT", analytics_enabled=False, delete_cache=(3600, 86400)
        ) as blocks:
            notice = (
                " · **demo model**: random weights, well-formed but meaningless answers"
                if self.gpt.is_demo
                else ""
            )
            gr.Markdown(f"## AnyGPT{notice}")
            with gr.Tabs():
                with gr.Tab("Chat", id="chat-tab"):
                    self._chat_tab()
                with gr.Tab("Tasks", id="tasks-tab"):
                    self._tasks_tab()
            blocks.unload(self._unload_handler)
        return blocks

    def _chat_tab(self) -> None:
        gr = self.gr
        chatbot = gr.Chatbot(label="Conversation", elem_id="chat", height=360)
        speaker = self._speaker() if self.speaks else None
        status = gr.Markdown("", label="Status", elem_id="status")  # the label names the API's
        with gr.Row():
            text = gr.Textbox(
                label="Message",
                placeholder="Type a message; attach files below",
                elem_id="message",
                scale=4,
                lines=2,
            )
            with gr.Column(scale=1, min_width=140):
                send = gr.Button("Send", variant="primary", elem_id="send")
                with gr.Row():
                    stop = gr.Button("Stop", elem_id="stop", min_width=60)
                    clear = gr.Button("Clear", elem_id="clear", min_width=60)
        # above the attachments, so it shows without scrolling at 1280x900
        to = gr.Radio(
            ["text", *self.modalities], value="text", label="Answer as", elem_id="answer-modality"
        )
        inputs = self._attachments()
        with gr.Row():
            voice = self._voice() if SPEECH in self.modalities else None
            seed = gr.Number(
                self.seed, label="Seed (empty: a new one each turn)", precision=0, elem_id="seed"
            )
        downloads = gr.File(
            label="Files of the last answer", file_count="multiple", interactive=False
        )
        #: the attachments' parameters of the chat endpoint, by modality
        self._inputs = {name: _input_parameter(name) for name in inputs}
        # the chat endpoint's parameters, by name: /chat(message, answer_as, image_files, ...)
        fields: dict[str, Any] = {"message": text, "answer_as": to}
        fields.update({self._inputs[name]: c for name, c in inputs.items()})
        if voice is not None:
            fields["voice_prompt"] = voice
        fields.update(seed=seed, history=chatbot)
        # the order of every value a chat handler returns or yields (`_outputs`)
        outputs = [chatbot, status, downloads, text, *inputs.values()]
        if speaker is not None:
            outputs.append(speaker)
        self._wire_chat(fields, outputs, (send, stop, clear))

    def _speaker(self) -> Any:  # noqa: ANN401 - gr.Audio
        """The spoken answer, playing from its first decoded second while the model goes on."""
        return self.gr.Audio(
            label="Spoken answer (plays as it is spoken)",
            streaming=True,
            autoplay=True,
            interactive=False,
            sources=["microphone"],  # Gradio streams only an Audio that names the microphone
            elem_id="spoken-answer",
        )

    def _outputs(self, values: list[Any], audio: bytes | None = None) -> list[Any]:
        """A chat handler's values, with the next piece of the spoken answer where it plays."""
        return [*values, audio] if self.speaks else values

    def _attachments(self) -> dict[str, Any]:
        """A file input per modality the model reads (speech: record or upload), in a row."""
        gr = self.gr
        inputs: dict[str, Any] = {}
        with gr.Row():
            for name in self.modalities:
                if name == SPEECH:
                    inputs[name] = gr.Audio(
                        sources=["upload", "microphone"],
                        type="filepath",
                        label="Spoken instruction (record or upload)",
                        elem_id="input-speech",
                    )
                else:
                    inputs[name] = gr.File(
                        label=f"{name.capitalize()} files",
                        file_count="multiple",
                        file_types=self._types(name),
                        elem_id=f"input-{name}",
                        height=140,
                    )
        return inputs

    def _voice(self) -> Any:  # noqa: ANN401 - gr.Audio
        return self.gr.Audio(
            sources=["upload"],
            type="filepath",
            label="Voice of spoken answers (optional)",
            elem_id="voice",
        )

    def _wire_chat(
        self, fields: dict[str, Any], outputs: list[Any], buttons: tuple[Any, Any, Any]
    ) -> None:
        """The chat tab's events: /chat (Send or Enter), /stop, /clear, and a closed tab.

        `fields` are the chat endpoint's inputs by parameter name, `outputs` what its handlers
        return (the chat, the status line, ...), `buttons` Send, Stop and Clear.
        """
        gr = self.gr
        send, stop, clear = buttons
        status = outputs[1]

        def turn(request: Any, *values: Any) -> Iterator[list[Any]]:  # noqa: ANN401
            yield from self._turn(dict(zip(fields, values, strict=True)), _session(request))

        _name_parameters(turn, list(fields))

        def clear_chat(request: Any) -> list[Any]:  # noqa: ANN401 - gr.Request
            return self._clear(_session(request))

        def unload(request: Any) -> None:  # noqa: ANN401 - gr.Request
            self.sessions.drop(_session(request))

        def stopped(request: Any) -> Any:  # noqa: ANN401 - gr.Request; a status or no change
            return self._stop(_session(request))

        for handler in (turn, clear_chat, unload, stopped):
            _wants_request(handler, gr.Request)
        turns = [
            trigger(
                turn,
                inputs=list(fields.values()),
                outputs=outputs,
                concurrency_limit=None,  # tabs generate together: the engine batches them
                show_progress="minimal",
                api_name=name,
                trigger_mode="multiple",  # a send while answering is told so, not dropped
            )
            for trigger, name in ((send.click, "chat"), (fields["message"].submit, False))
        ]
        stop.click(stopped, outputs=[status], cancels=turns, api_name="stop")
        clear.click(clear_chat, outputs=[*outputs], api_name="clear")
        self._unload_handler = unload

    def _tasks_tab(self) -> None:
        gr = self.gr
        offered = [
            t for t in ONE_SHOT_TASKS if {t.source, t.target} - {"text"} <= set(self.modalities)
        ]
        if not offered:
            gr.Markdown("No one-shot task: install a modality plugin (anygpt-image, …).")
            return
        with gr.Tabs():
            for task in offered:
                with gr.Tab(task.title, id=f"task-{task.key}"):
                    self._task_panel(task)

    def _task_panel(self, task: OneShot) -> None:
        gr = self.gr
        key = task.key
        config = self.gpt.config_for(task.target)
        source = self._task_source(task)
        voice = None
        if task.target == SPEECH:
            voice = gr.Audio(
                sources=["upload"],
                type="filepath",
                label="Voice prompt (optional)",
                elem_id=f"{key}-voice",
            )
        with gr.Accordion("Decoding", open=False):
            with gr.Row():
                temperature = gr.Number(config.temperature, label="temperature", minimum=0)
                top_p = gr.Number(config.top_p, label="top_p", minimum=0, maximum=1)
                top_k = gr.Number(config.top_k, label="top_k", precision=0, minimum=0)
            with gr.Row():
                max_new = gr.Number(
                    config.max_new_tokens, label="max_new_tokens", precision=0, minimum=1
                )
                sample = gr.Checkbox(config.do_sample, label="sample (off: greedy)")
        seed = gr.Number(0, label="Seed", precision=0, elem_id=f"{key}-seed")
        go = gr.Button("Run", variant="primary", elem_id=f"{key}-run")
        status = gr.Markdown("", label="Status", elem_id=f"{key}-status")
        text = gr.Textbox(label="Text answer", interactive=False, elem_id=f"{key}-text")
        media = self._task_media(task)
        files = gr.File(label="Files", file_count="multiple", interactive=False)
        fields = [source, voice, temperature, top_p, top_k, max_new, sample, seed]
        go.click(
            self._task_handler(task, with_media=media is not None),
            inputs=[f if f is not None else gr.State(None) for f in fields],
            outputs=[status, text, *([media] if media is not None else []), files],
            concurrency_limit=None,
            api_name=key.replace("-", "_"),  # /text_image, /speech_text, ... (not /run_3)
        )

    def _task_source(self, task: OneShot) -> Any:  # noqa: ANN401 - a Gradio component
        """The task's input: a text box, a recorder for speech, a file otherwise."""
        gr = self.gr
        if task.source == "text":
            return gr.Textbox(label="Text", value=task.hint, elem_id=f"{task.key}-input")
        if task.source == SPEECH:
            return gr.Audio(
                sources=["upload", "microphone"],
                type="filepath",
                label="Speech",
                elem_id=f"{task.key}-input",
            )
        return gr.File(
            label=f"{task.source.capitalize()} file",
            file_types=self._types(task.source),
            elem_id=f"{task.key}-input",
        )

    def _task_media(self, task: OneShot) -> Any:  # noqa: ANN401 - a Gradio component or None
        """Where the task's media answer shows: an image, a player, or nothing for text."""
        gr = self.gr
        if task.target == "image":
            return gr.Image(
                label="Image", type="filepath", interactive=False, elem_id=f"{task.key}-out"
            )
        if task.target != "text":
            return gr.Audio(
                label=task.target.capitalize(),
                type="filepath",
                interactive=False,
                elem_id=f"{task.key}-out",
            )
        return None

    def _task_handler(self, task: OneShot, *, with_media: bool) -> Callable[..., list[Any]]:
        """The task's endpoint: its parameters' names are the page's API (gradio_client)."""

        def run(
            source: Any,  # noqa: ANN401 - text or an uploaded file's path
            voice_prompt: str | None = None,  # None: the API may leave it out
            temperature: float | None = None,  # None: the task's decoding config
            top_p: float | None = None,
            top_k: float | None = None,
            max_new_tokens: float | None = None,
            do_sample: bool | None = None,
            seed: float | None = None,
        ) -> list[Any]:
            return self._one_shot(
                task,
                source,
                voice_prompt,
                temperature,
                top_p,
                top_k,
                max_new_tokens,
                do_sample,
                seed,
                with_media=with_media,
            )

        return run

    # --- handlers ----------------------------------------------------------------------------

    def _stop(self, key: str, wait: float = 30.0) -> Any:  # noqa: ANN401 - a status or no change
        """Stop the tab's running turn; the status says once it has ended whether it was kept.

        Gradio cancels the turn's event too, but a turn whose answer is already complete may still
        deliver it: the status then says so instead of claiming the answer was dropped.
        """
        tab = self.sessions.tab(key)
        if not tab.running:
            return self.gr.update()  # nothing is being answered: the status stays
        tab.stop.set()
        if not tab.lock.acquire(timeout=wait):  # the turn ends at its next event
            return "Stopping…"
        tab.lock.release()
        if tab.kept:
            return f"Answered (message {tab.sent}) before Stop took effect"
        return "Stopped: the answer was not kept; send again to retry"

    def _clear(self, key: str) -> list[Any]:
        """Empty the tab's history: the page's chat, status, files, message and attachments."""
        tab = self.sessions.tab(key)
        with tab.lock:
            tab.conversation.clear()
        return self._outputs([[], "History cleared.", None, "", *([None] * len(self._inputs))])

    def _turn(self, values: dict[str, Any], key: str) -> Iterator[list[Any]]:
        """One chat turn, streamed: the page's chat, status line, files and cleared inputs."""
        gr = self.gr
        history = list(values.get("history") or [])
        text = str(values.get("message") or "")
        attached = {
            name: _paths(values.get(key))
            for name, key in self._inputs.items()
            if _paths(values.get(key))
        }
        voice = values.get("voice_prompt") or None
        to = str(values.get("answer_as") or "text")
        seed_value = values.get("seed")
        seed = int(seed_value) if seed_value not in (None, "") else None
        uploads = [p for paths in attached.values() for p in paths] + ([voice] if voice else [])
        keep_inputs = [gr.update() for _ in self._inputs]
        tab = self.sessions.tab(key)
        if not tab.lock.acquire(blocking=False):  # the message stays in the box, not lost
            busy = f"Still answering message {tab.sent}: this one waits in the box (or Stop)"
            yield self._outputs([gr.update(), busy, gr.update(), gr.update(), *keep_inputs])
            return
        try:
            number = tab.begin()
            shown = history + self._user_messages(text, attached)
            # the message leaves the box now: what is typed while it is answered stays there
            yield self._outputs(
                [shown, f"*Encoding the message… {number}*", None, "", *keep_inputs]
            )
            from anygpt_core.chat import Reply

            turn = tab.conversation.stream(
                text,
                inputs=attached,
                voice_prompt=voice,
                to=to,
                seed=seed,
                stream_audio=self.speaks,
            )
            progress = _Progress()
            try:
                for item in turn:
                    if isinstance(item, Reply):
                        tab.kept = True
                        yield self._answered(item, history, text, attached, number)
                        return
                    if tab.stop.is_set():  # Stop: nothing more is shown, the answer is dropped
                        return
                    shown_now = self._progress(item, progress, shown, keep_inputs)
                    if shown_now is not None:
                        yield shown_now
            except Exception as err:  # noqa: BLE001 - one line; the conversation and the inputs stay
                message = self._message(err, uploads)
                failed = [history, f"**Error** {number}: {message}", None, text, *keep_inputs]
                yield self._outputs(failed)
            finally:
                turn.close()  # the page went away or Stop: the rows leave the engine's batch
        finally:
            tab.running = False
            tab.lock.release()

    def _progress(
        self, item: object, progress: _Progress, shown: list[Any], keep_inputs: list[Any]
    ) -> list[Any] | None:
        """The page while a turn is written; None when nothing is due.

        A piece of the spoken answer goes out at once; the text and status line at most every
        `_REFRESH_SECONDS`.
        """
        from anygpt_core.chat import AudioChunk

        gr = self.gr
        if isinstance(item, AudioChunk):  # played as soon as it is decoded
            unchanged = [gr.update(), gr.update(), None, gr.update(), *keep_inputs]
            return self._outputs(unchanged, _wav(item.samples, item.sample_rate))
        status = progress.status(item)
        if not progress.due(status):
            return None
        chat = [*shown, progress.answer()]
        return self._outputs([chat, status or gr.update(), None, gr.update(), *keep_inputs])

    def _answered(
        self,
        reply: Reply,
        history: list[Any],
        text: str,
        attached: Mapping[str, list[str]],
        number: str,
    ) -> list[Any]:
        """The page once a turn is answered: the chat, a status line, the files, inputs cleared."""
        final = history + self._user_messages(text, attached) + self._answer_messages(reply)
        note = (
            f"Answered {number} in {reply.seconds:.1f} s · {reply.new_tokens} tokens · "
            f"{reply.finish_reason} · seed {reply.seed}"
        )
        if reply.dropped:
            note += f" · dropped the {reply.dropped} oldest turn(s) to fit the context"
        files = [str(f) for f in reply.files] or None
        return self._outputs([final, note, files, self.gr.update(), *[None] * len(self._inputs)])

    def _user_messages(self, text: str, attached: Mapping[str, list[str]]) -> list[dict[str, Any]]:
        messages: list[dict[str, Any]] = [
            {"role": "user", "content": {"path": path}}
            for paths in attached.values()
            for path in paths
        ]
        if text.strip():
            messages.append({"role": "user", "content": text.strip()})
        return messages

    def _answer_messages(self, reply: Reply) -> list[dict[str, Any]]:
        messages: list[dict[str, Any]] = []
        if reply.text:
            messages.append({"role": "assistant", "content": reply.text})
        messages += [{"role": "assistant", "content": {"path": str(f)}} for f in reply.files]
        if not messages:
            messages.append({"role": "assistant", "content": "(an empty answer)"})
        return messages

    def _message(self, err: BaseException, uploads: Sequence[str]) -> str:
        if isinstance(err, AnyGPTError):
            return _short(first_line(err), uploads)
        return f"internal error: {type(err).__name__}: {_short(first_line(err), uploads)}"

    def _one_shot(
        self,
        task: OneShot,
        source: Any,  # noqa: ANN401 - text or an uploaded file's path
        voice: str | None,
        temperature: float | None,
        top_p: float | None,
        top_k: float | None,
        max_new_tokens: float | None,
        do_sample: bool | None,
        seed: float | None,
        *,
        with_media: bool,
    ) -> list[Any]:
        """Run one task through the engine; the status line, text, media and files."""
        from anygpt_core.tasks import Task

        uploads = [p for p in (source if task.source != "text" else None, voice) if p]
        try:
            payload = str(source or "").strip()
            if not payload:
                what = "type a text" if task.source == "text" else f"give a {task.source} file"
                raise InputError(f"{task.title}: {what}")
            result = self.gpt.run(
                Task(task.source, task.target, payload, voice or None),
                seed=int(seed) if seed is not None else None,
                temperature=temperature,
                top_p=top_p,
                top_k=int(top_k) if top_k is not None else None,
                max_new_tokens=int(max_new_tokens) if max_new_tokens is not None else None,
                do_sample=do_sample,
            )
        except Exception as err:  # noqa: BLE001 - every failure is one line in the page
            message = self._message(err, [str(u) for u in uploads])
            return [f"**Error**: {message}", "", *([None] if with_media else []), None]
        note = (
            f"Done in {result.seconds:.1f} s · {result.new_tokens} tokens · "
            f"{result.finish_reason} · seed {result.seed}"
        )
        files = [str(f) for f in result.files]
        media = [files[0] if files else None] if with_media else []
        return [note, result.text, *media, files or None]

    # --- serving -----------------------------------------------------------------------------

    def launch(self, *, host: str, port: int, block: bool = True) -> str:
        """Serve the page on `host:port`; return its URL (with `block`, only after Ctrl-C).

        Raises:
            InputError: the port is taken or the address cannot be bound.
        """
        self.output_dir.mkdir(parents=True, exist_ok=True)
        try:
            _, url, _ = self.blocks.queue(default_concurrency_limit=None).launch(
                server_name=host,
                server_port=port,
                prevent_thread_lock=not block,
                share=False,
                inbrowser=False,
                quiet=True,
                show_error=False,
                allowed_paths=[str(self.output_dir.resolve())],
                footer_links=[],
                css=_CSS,
                ssr_mode=False,
                pwa=False,
                mcp_server=False,
                enable_monitoring=False,
                theme=self.theme(),
            )
        except OSError as err:
            raise InputError(f"cannot serve on {host}:{port}: {first_line(err)}") from None
        return str(url)

    def close(self) -> None:
        """Stop serving."""
        self.blocks.close()
