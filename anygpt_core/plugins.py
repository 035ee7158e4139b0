"""Plugin discovery: entry points in the group `anygpt`, loaded one at a time, faults isolated."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, Literal, cast

import pluggy
from pydantic import ValidationError

from anygpt_core import spec as hookspecs
from anygpt_core.errors import PluginError, first_line
from anygpt_core.spec import CodecOption, ModalitySpec

if TYPE_CHECKING:
    from anygpt_core.evaluation.task import EvalTask

__all__ = [
    "PluginInfo",
    "PluginSet",
    "discover",
    "modality_order",
]

logger = logging.getLogger(__name__)

State = Literal["loaded", "broken", "conflict", "blocked", "not selected"]


@dataclass
class PluginInfo:
    """What `anygpt plugins` shows about one entry point."""

    name: str
    module: str
    distribution: str | None = None
    version: str | None = None
    state: State = "loaded"
    error: str | None = None
    modalities: list[ModalitySpec] = field(default_factory=list)
    hooks: list[str] = field(default_factory=list)


def _csv(value: str | None) -> list[str]:
    return [part.strip() for part in (value or "").split(",") if part.strip()]


def modality_order(specs: Iterable[ModalitySpec]) -> list[ModalitySpec]:
    """Modalities in their canonical order: by the `rank` each declares, then by name."""
    return sorted(specs, key=lambda spec: (spec.rank, spec.name))


class PluginSet:
    """The plugins found in this environment and the modalities they registered."""

    def __init__(
        self,
        infos: list[PluginInfo],
        manager: pluggy.PluginManager,
        *,
        known: Mapping[str, str] | None = None,
    ) -> None:
        self.infos = infos
        self.manager = manager
        #: modality -> distribution that provides it, named when it is not installed
        self.known: dict[str, str] = dict(known or {})
        specs = [spec for info in infos if info.state == "loaded" for spec in info.modalities]
        self.modalities: dict[str, ModalitySpec] = {
            spec.name: spec for spec in modality_order(specs)
        }

    def modality(self, name: str) -> ModalitySpec:
        """The spec of an installed modality.

        Raises:
            PluginError: no loaded plugin provides it; the message names what to install.
        """
        if name in self.modalities:
            return self.modalities[name]
        for info in self.infos:
            if info.state != "loaded" and any(m.name == name for m in info.modalities):
                raise PluginError(f"modality {name!r}: plugin {info.name!r} is {info.state}")
        if name in self.known:
            raise PluginError(f"modality {name!r} needs a plugin: pip install {self.known[name]}")
        known = ", ".join(["text", *self.modalities])
        skipped = [f"{i.name} ({i.state})" for i in self.infos if i.state != "loaded"]
        hint = f"; not loaded: {', '.join(skipped)}" if skipped else ""
        raise PluginError(f"unknown modality {name!r}; installed: {known}{hint}")

    def options(self) -> list[CodecOption]:
        """Every codec option of the installed modalities, without duplicates, in modality order."""
        seen: dict[str, CodecOption] = {}
        for spec in self.modalities.values():
            for option in spec.options:
                seen.setdefault(option.name, option)
        return list(seen.values())

    def decoding_fields(self) -> set[str]:
        """Decoding config fields the installed modalities read, the core's and their own.

        A config file may hold any of them, whatever modality it serves (a decoder's steps, say).
        """
        return {
            name for spec in self.modalities.values() for name in type(spec.decoding).model_fields
        }

    def option_panels(self) -> dict[str, str]:
        """The `--help` panel of each codec option: titled by the distribution that adds it."""
        panels: dict[str, str] = {}
        for info in self.infos:
            if info.state == "loaded":
                title = f"{info.distribution or info.name} options"
                for spec in info.modalities:
                    for option in spec.options:
                        panels.setdefault(option.name, title)
        return panels

    def key(self) -> str:
        """A string identifying the installed modalities and plugin versions (the demo's cache key)."""
        parts = []
        for info in self.infos:
            if info.state == "loaded":
                names = ",".join(m.name for m in info.modalities)
                parts.append(f"{info.name}={info.version or '0'}[{names}]")
        return ";".join(sorted(parts))

    def eval_tasks(self) -> dict[str, EvalTask]:
        """The evaluation tasks of the loaded plugins (`anygpt_eval_tasks`), by name.

        A plugin whose hook fails or returns something else than `EvalTask`s, or a task whose name
        an earlier plugin took, is logged and left out: the other tasks stay available.
        """
        from anygpt_core.evaluation.task import EvalTask

        tasks: dict[str, EvalTask] = {}
        for impl in self.manager.hook.anygpt_eval_tasks.get_hookimpls():
            name = self.manager.get_name(impl.plugin) or "plugin"
            try:
                returned: list[object] = list(cast("Iterable[object]", impl.function()))
            except Exception as err:  # noqa: BLE001 - one plugin's tasks must not hide the others'
                logger.warning("plugin %s: anygpt_eval_tasks failed: %s", name, first_line(err))
                continue
            for task in returned:
                if not isinstance(task, EvalTask):
                    logger.warning("plugin %s: anygpt_eval_tasks returned %r", name, task)
                elif task.name in tasks:
                    logger.warning("plugin %s: eval task %r already registered", name, task.name)
                else:
                    tasks[task.name] = task
        return tasks

    def eval_task(self, name: str, known: Mapping[str, str] | None = None) -> EvalTask:
        """One evaluation task by name.

        Args:
            name: the task, e.g. `librispeech-asr`.
            known: task -> the distribution that provides it, named when it is not installed.

        Raises:
            PluginError: no loaded plugin provides it (exit 5), naming what to install.
        """
        tasks = self.eval_tasks()
        if name in tasks:
            return tasks[name]
        if known and name in known:
            raise PluginError(f"eval task {name!r} needs a plugin: pip install {known[name]}")
        listed = ", ".join(sorted(tasks)) or "none"
        raise PluginError(f"unknown eval task {name!r}; installed: {listed}")

    def demo_assets(self, directory: Path) -> dict[str, Any]:
        """Call each loaded plugin's `anygpt_demo_assets` hook with its own subdirectory."""
        values: dict[str, Any] = {}
        for impl in self.manager.hook.anygpt_demo_assets.get_hookimpls():
            name = self.manager.get_name(impl.plugin) or "plugin"
            target = directory / name
            target.mkdir(parents=True, exist_ok=True)
            result = impl.function(directory=target)
            if not isinstance(result, Mapping):
                raise PluginError(f"plugin {name!r}: anygpt_demo_assets must return a mapping")
            values.update(result)
        return values


def _distribution(ep: EntryPoint) -> str | None:
    dist = getattr(ep, "dist", None)
    return dist.metadata["Name"] if dist is not None else None


def _entry_point_info(ep: EntryPoint) -> PluginInfo:
    dist = getattr(ep, "dist", None)
    return PluginInfo(
        name=ep.name,
        module=ep.value,
        distribution=_distribution(ep),
        version=dist.version if dist is not None else None,
    )


def _clash(spec: ModalitySpec, taken: Mapping[str, str]) -> str | None:
    for what, value in (
        ("name", spec.name),
        ("prefix", spec.prefix),
        ("start token", spec.start),
        ("end token", spec.end),
    ):
        owner = taken.get(value)
        if owner is not None:
            return f"modality {spec.name!r}: {what} {value!r} already registered by {owner!r}"
    return None


def discover(
    *,
    block: Iterable[str] = (),
    load_only: Iterable[str] | None = None,
    extra: Mapping[str, ModuleType | object] | None = None,
    use_entry_points: bool = True,
    known: Mapping[str, str] | None = None,
) -> PluginSet:
    """Find, load and validate plugins one at a time.

    Args:
        block: plugin names to skip (added to `ANYGPT_BLOCK_PLUGINS`).
        load_only: if given, only these plugins load (default `ANYGPT_LOAD_PLUGINS`, if set).
        extra: plugin objects registered directly (name -> module), after the entry points.
        use_entry_points: read the `anygpt` entry-point group of the environment.
        known: modality -> the distribution that provides it, for "pip install" hints; plugins of
            these distributions load first and so win a conflict.

    A plugin that fails to import, implements an unknown hook, returns an invalid spec, or registers a
    modality clashing with an earlier one is recorded with its reason and skipped.
    """
    blocked = set(block) | set(_csv(os.environ.get("ANYGPT_BLOCK_PLUGINS")))
    only_env = _csv(os.environ.get("ANYGPT_LOAD_PLUGINS"))
    only = set(load_only) if load_only is not None else (set(only_env) if only_env else None)

    manager = pluggy.PluginManager(hookspecs.PROJECT)
    manager.add_hookspecs(hookspecs)
    candidates: list[tuple[PluginInfo, EntryPoint | None, object | None]] = []
    if use_entry_points:
        # Known distributions first, then the rest by name: the earlier one wins a conflict.
        preferred = set((known or {}).values())
        eps = sorted(
            entry_points(group=hookspecs.PROJECT),
            key=lambda e: (_distribution(e) not in preferred, e.name),
        )
        candidates += [(_entry_point_info(ep), ep, None) for ep in eps]
    for name, obj in (extra or {}).items():
        module = getattr(obj, "__name__", type(obj).__name__)
        candidates.append((PluginInfo(name=name, module=module), None, obj))

    infos: list[PluginInfo] = []
    taken: dict[str, str] = {}
    for info, ep, obj in candidates:
        infos.append(info)
        if info.name in blocked:
            info.state = "blocked"
            continue
        if only is not None and info.name not in only:
            info.state = "not selected"
            continue
        _load_one(manager, info, ep, obj, taken)
    return PluginSet(infos, manager, known=known)


def _load_one(
    manager: pluggy.PluginManager,
    info: PluginInfo,
    ep: EntryPoint | None,
    obj: object | None,
    taken: dict[str, str],
) -> None:
    try:
        plugin = ep.load() if ep is not None else obj
        if manager.is_registered(plugin) or manager.get_plugin(info.name) is not None:
            raise PluginError(f"plugin {info.name!r} is registered twice")
        manager.register(plugin, name=info.name)
        try:
            manager.check_pending()
            info.hooks = sorted({c.name for c in manager.get_hookcallers(plugin) or []})
            raw: list[Any] = []
            for impl in manager.hook.anygpt_modalities.get_hookimpls():
                if impl.plugin is plugin:
                    returned = impl.function()
                    if not isinstance(returned, (list, tuple)):
                        raise PluginError("anygpt_modalities must return a list of ModalitySpec")
                    raw.extend(returned)
            specs = [ModalitySpec.model_validate(s) for s in raw]
        except BaseException:
            manager.unregister(plugin)
            raise
    except ValidationError as err:
        info.state, info.error = "broken", f"invalid modality spec: {err.errors()[0]['msg']}"
        logger.warning("plugin %s skipped: %s", info.name, info.error)
        return
    except (Exception, SystemExit) as err:  # noqa: BLE001 - a broken plugin must not stop the others
        info.state, info.error = "broken", f"{type(err).__name__}: {err}".splitlines()[0]
        logger.warning("plugin %s skipped: %s", info.name, info.error)
        return
    info.modalities = specs
    own: dict[str, str] = {}
    for spec in specs:
        problem = _clash(spec, taken) or _clash(spec, own)
        if problem:
            manager.unregister(plugin)
            info.state, info.error = "conflict", problem
            logger.warning("plugin %s skipped: %s", info.name, problem)
            return
        for value in (spec.name, spec.prefix, spec.start, spec.end):
            own[value] = info.name
    taken.update(own)
