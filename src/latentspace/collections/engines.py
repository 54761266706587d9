"""Where a build's units run: an `Engine` embeds units into staging/ and yields each result.

Two implementations: `LocalEngine` (this process, one unit after another) and `RayEngine`
(ray_engine.py: a pool of Ray actors). Both call the same `embed_unit` with the plan's units, so
either gives the same parts, byte for byte, and either can finish a build the other started."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Protocol

from latentspace.collections.plan import Unit
from latentspace.collections.settings import BuildSettings
from latentspace.collections.unit import PartResult, UnitRuntime, embed_unit
from latentspace.models.embedder import Embedder
from latentspace.progress import Progress

ENGINES = ("local", "ray")


class Engine(Protocol):
    def start(self, model: Embedder | str, settings: BuildSettings) -> None:
        """Get ready to embed with `model` (called once there are units to embed)."""

    def run(
        self, units: list[Unit], settings: BuildSettings, staging: Path, progress: Progress
    ) -> Iterator[PartResult]:
        """Embed `units` with `settings`, each into `staging/<part>.parquet` (atomically), yielding
        each one's result as it is written, in any order."""
        ...

    def close(self) -> None:
        """End what `start` and `run` started; the engine is not used again."""


class LocalEngine:
    """Units embedded in this process, one after another, on one `UnitRuntime` (rebuilt when a
    plan asks for other settings than the one before)."""

    def __init__(self, runtime: UnitRuntime) -> None:
        self.runtime = runtime

    def start(self, model: Embedder | str, settings: BuildSettings) -> None:
        pass  # the runtime exists already: the build measured its batch size with it

    def run(
        self, units: list[Unit], settings: BuildSettings, staging: Path, progress: Progress
    ) -> Iterator[PartResult]:
        if self.runtime.settings != settings:
            model = self.runtime.model
            self.runtime.close()
            self.runtime = UnitRuntime(model, settings)
        for n, unit in enumerate(units):
            progress.describe(f"part {n + 1}/{len(units)}")
            yield embed_unit(unit, self.runtime, staging, progress=progress)

    def close(self) -> None:
        self.runtime.close()


def check_engine(name: str) -> None:
    """Fail now, before any model is loaded, on an unknown engine or a Ray that is not installed."""
    if name not in ENGINES:
        raise ValueError(f"engine must be one of {', '.join(ENGINES)}, not {name!r}")
    if name == "ray":
        from latentspace.collections.ray_engine import import_ray

        import_ray()


def open_engine(
    name: str,
    runtime: UnitRuntime,
    *,
    ray_address: str | None = None,
    ray_actors: int | None = None,
    log: Callable[[str], None] = lambda line: None,
) -> Engine:
    """The engine called `name`; `runtime` is the build's own (the local engine embeds with it)."""
    check_engine(name)
    if name == "local":
        return LocalEngine(runtime)
    from latentspace.collections.ray_engine import RayEngine

    return RayEngine(address=ray_address, actors=ray_actors, log=log)
