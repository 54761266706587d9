"""`--engine ray`: a build's units embedded by a pool of Ray actors instead of this process.

    latentspace collection build photos --model SPEC --images /data/photos --engine ray \\
        [--ray-address HOST:PORT] [--ray-actors N]

Everything but the embedding stays where it is (build.py, plan.py, commit.py): the driver scans the source, writes
`plan.json`, and commits. Only the plan's pending units go to the actors, each one run by the
very `embed_unit` the local engine calls, with the plan's batch size and settings, so a unit
gives the same part byte for byte on either engine. That is why a local build and a Ray build
of a folder are identical, and why either can finish a build the other was killed in. (The
same bytes assume the same arithmetic: the same kind of processor, and for some CPU kernels the
same torch thread count, which an actor sets to the CPUs it reserved.)

**The pool.** Each actor loads the model once (a `UnitRuntime`: the model, its image forward,
its decode threads) and then embeds the units it is handed, one at a time, with one more queued
so it never waits on the driver. With GPUs in the cluster an actor asks for one GPU each
(`num_gpus=1`), one actor per GPU by default. (Ray then sets the actor's CUDA_VISIBLE_DEVICES;
the forward runs where the Embedder puts it, and today's loaders keep models on the CPU.) On
CPUs an actor uses `--decode-threads` CPUs (default: the CPUs of the smallest node), and the
pool has `--ray-actors` actors (default: the cluster's CPUs / the CPUs per actor, at least 1):
on one machine that is one actor using all of it, like the local engine; on a cluster, one per
node. Torch's threads in an actor are set to the CPUs it reserved, so actors sharing a node do
not oversubscribe it. Units are handed to actors as they become ready, so an actor that cannot
be placed (more asked for than the cluster has) only means fewer actors, not a hang.

**The model in the actors.** A spec string travels as is and every actor loads it (the model
files must be readable at the same path on every node, or the spec must name a packaged
model). An Embedder object is pickled once into the object store and each actor unpickles it
(its class must be importable there: an installed package or a module on the workers' path).

**Results.** An actor writes each part into a temporary folder and returns the file's bytes
with the `PartResult`; the driver writes them into `staging/` atomically, as the local engine
does, and yields the result to the build, which reports progress (parts, images done, images/s)
through the same progress objects, one unit at a time. So the collection directory
is written by the driver alone and needs to exist only on its machine (the images must be
readable from the workers: a shared filesystem, shards over pipe:, or URLs).

**Failures.** A unit that fails (an exception in `embed_unit`, or its actor process dying, e.g.
killed for memory) stops the build with an error naming the unit. Nothing is retried: a unit
that kills its actor would kill the next one too. The parts staged so far stay (with those
other actors had already finished), and the plan too, so the next build (either engine) embeds
only what is missing. The actors are killed when the build ends, however it ends.

**Ray.** `ray_address` (or RAY_ADDRESS) connects to a running cluster; without one, a local Ray
instance is started with this machine's CPUs and shut down after the build. A process that is
already connected (`ray.init` called by the caller) is used as it is and left connected.

**Why Ray core actors, not Ray Data.** Ray Data's `map_batches` over an actor pool would run
the same units, but what it adds does not apply here: its strength is streaming blocks of data
between operators with backpressure, while these units are small JSON descriptions, the images
are read by the actors themselves, and only each finished part (a few MB) comes back.
Splitting decoding and the forward into two Ray Data stages would change the unit function,
and with it the byte-for-byte equality with the local engine. It would cost: a block-per-unit
layout to force, actors that it restarts and tasks that it retries without limit by default (a
unit that crashes its actor would crash them forever), failures reported per block rather than
per unit, and progress output of its own. A few dozen lines over actors give the same pool (the model loaded once per
actor, GPU requests, results streamed back as they finish), with failures named by unit. So
the extra is `ray` alone, not `ray[data]`.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from latentspace import atomic, process_state
from latentspace.collections.plan import Unit
from latentspace.collections.settings import BuildSettings
from latentspace.collections.unit import PartResult, UnitRuntime, as_embedder, embed_unit, model_spec
from latentspace.models.embedder import Embedder
from latentspace.process_state import ProcessState
from latentspace.progress import Progress

INSTALL_HINT = "pip install 'latentspace[ray]'"
QUEUED_PER_ACTOR = 2  # units handed to an actor at once: the one it runs and the next
WAIT_NOTICE_S = 60.0  # how often the driver says it still waits for actors to start


def import_ray() -> Any:
    """The `ray` module, or a RuntimeError that says how to install it."""
    try:
        import ray
    except ImportError as e:
        raise RuntimeError(f"the Ray engine (--engine ray) needs Ray, which is not installed: {INSTALL_HINT}") from e
    return ray


@dataclass(frozen=True)
class PoolShape:
    actors: int
    cpus: int  # CPUs each actor reserves (and its torch threads)
    gpus: int  # GPUs each actor reserves: 1 on a cluster with GPUs, else 0


def pool_shape(
    cluster_cpus: float,
    node_cpus: list[float],
    cluster_gpus: float,
    *,
    decode_threads: int | None = None,
    actors: int | None = None,
) -> PoolShape:
    """How many actors, and what each reserves, from the cluster's resources (module docstring)."""
    cpus_total = max(1, int(cluster_cpus))
    largest = max(1, int(max(node_cpus, default=1)))
    smallest = max(1, int(min((c for c in node_cpus if c >= 1), default=1)))
    gpus = int(cluster_gpus)
    if gpus >= 1:
        count = min(actors or gpus, gpus)  # an actor past the GPUs could never be placed
        per_actor = decode_threads or max(1, cpus_total // count)
        return PoolShape(count, min(per_actor, largest), 1)
    if actors:
        return PoolShape(actors, min(decode_threads or max(1, cpus_total // actors), largest), 0)
    per_actor = min(decode_threads or smallest, largest)
    return PoolShape(max(1, cpus_total // per_actor), per_actor, 0)


class UnitWorker:
    """The actor: loads the model once, then embeds units (unit.embed_unit), each into a
    temporary folder, and returns each part's bytes."""

    def __init__(self, model: Embedder | str, settings: BuildSettings, threads: int) -> None:
        import torch

        torch.set_num_threads(threads)
        self.model = as_embedder(model)
        self.runtime = UnitRuntime(self.model, settings)  # a backend that cannot run fails here, at start

    def ready(self) -> int:
        return os.getpid()

    def embed(self, unit: Unit, settings: BuildSettings) -> tuple[PartResult, bytes]:
        if self.runtime.settings != settings:  # a resumed plan and a new one can differ
            self.runtime.close()
            self.runtime = UnitRuntime(self.model, settings)
        with tempfile.TemporaryDirectory(prefix="latentspace-unit-") as folder:
            result = embed_unit(unit, self.runtime, Path(folder))
            return result, (Path(folder) / f"{unit.part}.parquet").read_bytes()


class UnitFailed(RuntimeError):
    """A unit could not be embedded on the Ray actors; the message names it."""


class RayEngine:
    """Runs a build's units on a pool of Ray actors (an engines.Engine). Constructing it only checks that Ray is
    installed; `start` connects (or starts a local Ray instance) and starts the actors, `run`
    embeds units into staging/, `close` ends the actors and what `start` started."""

    def __init__(
        self, *, address: str | None = None, actors: int | None = None, log: Callable[[str], None] = lambda line: None
    ) -> None:
        if actors is not None and actors < 1:
            raise ValueError("ray_actors must be at least 1")
        self.ray = import_ray()
        self.address, self.requested, self.log = address, actors, log
        self.model: Embedder | str | None = None
        self.shape: PoolShape | None = None
        self.starting: dict[Any, Any] = {}  # ready() ref -> actor still loading the model
        self.ready: list[Any] = []
        # The process as it was before ray.init was called here (None: not called here, so the
        # connection, its shutdown and what it changed in this process are the caller's).
        self._before_init: ProcessState | None = None
        self._model_ref: Any = None

    # -- the pool -------------------------------------------------------------------------------

    def _connect(self) -> None:
        ray = self.ray
        if ray.is_initialized():
            self.log("using the Ray connection this process already has")
            return
        address = self.address or os.environ.get("RAY_ADDRESS")
        quiet = {"logging_level": logging.WARNING, "log_to_driver": False}
        # ray.init leaves a SIGTERM handler, an alternate signal stack and environment variables
        # behind, even after ray.shutdown; `close` puts the process back as it was.
        self._before_init = process_state.snapshot()
        if address:
            ray.init(address=address, **quiet)
            self.log(f"connected to the Ray cluster at {address}")
        else:
            from latentspace.data.workers import available_cpus

            ray.init(address="local", num_cpus=available_cpus(), include_dashboard=False, **quiet)
            self.log(f"started a local Ray instance with {available_cpus()} CPUs")

    def start(self, model: Embedder | str, settings: BuildSettings) -> None:
        """Connect, start the actors with `model` (a spec, or an Embedder to pickle to them), and
        wait until the first has loaded it. Once per engine: later calls change nothing."""
        if self.shape is not None:
            return
        ray = self.ray
        self.model = model
        self._connect()
        resources = ray.cluster_resources()
        node_cpus = [n["Resources"].get("CPU", 0.0) for n in ray.nodes() if n.get("Alive")]
        self.shape = shape = pool_shape(
            resources.get("CPU", 1.0),
            node_cpus,
            resources.get("GPU", 0.0),
            decode_threads=settings.decode_threads,
            actors=self.requested,
        )
        if not isinstance(model, str):
            model = self._model_ref = ray.put(model)  # pickled once; each actor unpickles its copy
        worker = ray.remote(UnitWorker).options(
            num_cpus=shape.cpus, num_gpus=shape.gpus, max_restarts=0, max_task_retries=0
        )
        for _ in range(shape.actors):
            actor = worker.remote(model, self._actor_settings(settings), shape.cpus)
            self.starting[actor.ready.remote()] = actor
        self.log(
            f"{shape.actors} Ray actor(s) loading {model_spec(self.model)!r}, each with {shape.cpus} CPU(s)"
            + (" and 1 GPU" if shape.gpus else "")
        )
        started = time.monotonic()
        while not self.ready:
            done, _ = ray.wait(list(self.starting), num_returns=1, timeout=WAIT_NOTICE_S)
            for ref in done:
                self._started(ref)
            if not done:
                self.log(
                    f"still waiting for a Ray actor to start ({time.monotonic() - started:.0f} s): each needs "
                    f"{shape.cpus} CPU(s){' and 1 GPU' if shape.gpus else ''}; the cluster has "
                    f"{ray.available_resources()} free"
                )

    def _actor_settings(self, settings: BuildSettings) -> BuildSettings:
        assert self.shape is not None
        return settings.but(decode_threads=settings.decode_threads or max(2, self.shape.cpus))

    def _started(self, ref: Any) -> None:
        actor = self.starting.pop(ref)
        try:
            self.ray.get(ref)
        except self.ray.exceptions.RayError as e:
            raise UnitFailed(
                f"a Ray actor could not load the model {model_spec(self.model or '?')!r}: {_cause(e)}"
            ) from e
        self.ready.append(actor)

    # -- running units --------------------------------------------------------------------------

    def run(
        self, units: list[Unit], settings: BuildSettings, staging: Path, progress: Progress
    ) -> Iterator[PartResult]:
        """Embed `units` on the actors, writing each part into `staging` as it arrives (in any
        order) and yielding its result. Raises UnitFailed naming the first unit that failed."""
        ray = self.ray
        if self.shape is None:
            raise RuntimeError("RayEngine.run before RayEngine.start")
        settings = self._actor_settings(settings)
        waiting = deque(units)
        queued: dict[Any, deque[Unit]] = {}  # actor -> its units, in the order it runs them
        flight: dict[Any, tuple[Any, Unit]] = {}  # result ref -> (actor, unit)
        done = 0
        progress.describe(f"part 0/{len(units)} on {len(self.ready)} Ray actor(s)")
        while waiting or flight:
            for actor in self.ready:
                line = queued.setdefault(actor, deque())
                while waiting and len(line) < QUEUED_PER_ACTOR:
                    unit = waiting.popleft()
                    line.append(unit)
                    flight[actor.embed.remote(unit, settings)] = (actor, unit)
            finished, _ = ray.wait(list(flight) + list(self.starting), num_returns=1)
            ref = finished[0]
            if ref in self.starting:  # another actor has loaded the model: it joins the pool
                self._started(ref)
                continue
            actor, unit = flight.pop(ref)
            try:
                result, data = ray.get(ref)
            except ray.exceptions.RayError as e:
                if isinstance(e, ray.exceptions.RayActorError):
                    # Every unit queued on the actor fails with it; the one it was running is the first.
                    culprit, others = queued[actor][0], len(queued[actor]) - 1
                    what = f"failed: the Ray actor embedding it died ({_cause(e)})" + (
                        f"; {others} more unit(s) queued on it were not run" if others else ""
                    )
                else:
                    culprit, what = unit, f"failed on a Ray actor: {_cause(e)}"
                done += self._salvage(flight, staging)
                raise UnitFailed(
                    f"unit {culprit.part} ({culprit.describe()}) {what}. The {done} part(s) "
                    "finished by this build are staged; rerun the build to resume"
                ) from e
            queued[actor].popleft()  # an actor runs its units in the order they were handed to it
            atomic.write_bytes(staging / f"{unit.part}.parquet", data, durable=True)
            done += 1
            progress.describe(f"part {done}/{len(units)} on {len(self.ready)} Ray actor(s)")
            progress.advance(result.rows + len(result.skipped))
            yield result

    def _salvage(self, flight: dict[Any, tuple[Any, Unit]], staging: Path) -> int:
        """Stage the units other actors have already finished (without waiting for the rest)."""
        if not flight:
            return 0
        finished, _ = self.ray.wait(list(flight), num_returns=len(flight), timeout=0)
        staged = 0
        for ref in finished:
            try:
                _, data = self.ray.get(ref)
            except self.ray.exceptions.RayError:
                continue
            atomic.write_bytes(staging / f"{flight[ref][1].part}.parquet", data, durable=True)
            staged += 1
        return staged

    def close(self) -> None:
        """Kill the actors, and shut down the Ray connection (or instance) if `start` made it."""
        ray = self.ray
        for actor in self.ready + list(self.starting.values()):
            try:
                ray.kill(actor)
            except Exception:  # already gone: nothing to end
                pass
        self.ready, self.starting = [], {}
        self._model_ref = None
        self.shape = None
        if self._before_init is not None:
            ray.shutdown()
            process_state.restore(self._before_init)
            self._before_init = None


def _cause(error: BaseException) -> str:
    """The useful part of a Ray error: the original exception of a failed task, else the first
    lines of Ray's own message."""
    cause = getattr(error, "cause", None)
    if isinstance(cause, BaseException) and not isinstance(cause, type(error)):
        return f"{type(cause).__name__}: {cause}"
    text = str(error).strip().splitlines()
    return " ".join(line.strip() for line in text[:3]) if text else type(error).__name__
