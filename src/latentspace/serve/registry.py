"""The served models: loaded in the background at start-up, each with its inference worker.

Loading happens on a thread so the server answers at once: /health says 503 ("loading") until
every model is ready, and requests for a model still loading get 503 with Retry-After.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial

import torch

from latentspace.models.embedder import Embedder
from latentspace.runtime import MIN_COSINE
from latentspace.runtime.agreement import reference_agreement
from latentspace.serve.batching import BatchKind, BatchObserver, InferenceWorker
from latentspace.serve.errors import ApiError, retry_later
from latentspace.serve.metrics import ServerMetrics
from latentspace.serve.models import ServedModel, load_order, load_served_model, parse_model_arg
from latentspace.serve.settings import ServeSettings

log = logging.getLogger(__name__)

# (name, spec, models loaded so far) -> the served model
Loader = Callable[[str, str, Sequence[Embedder]], ServedModel]


@dataclass
class Slot:
    name: str
    spec: str
    state: str = "loading"  # loading | ready | failed
    error: str | None = None
    served: ServedModel | None = None
    worker: InferenceWorker | None = None
    kinds: dict = field(default_factory=dict)  # batch kinds, made once per (modality, task type)

    @property
    def model(self) -> Embedder:
        """The ready model (only valid on slots `ModelRegistry.get` returned)."""
        assert self.served is not None
        return self.served.model

    @property
    def status(self) -> str:
        if self.state == "ready" and self.worker is not None and not self.worker.alive:
            return "dead"
        return self.state


class ModelRegistry:
    def __init__(self, settings: ServeSettings, metrics: ServerMetrics, loader: Loader | None = None):
        self.settings, self.metrics = settings, metrics
        self.loader = loader or partial(
            load_served_model,
            image=settings.image,
            text=settings.text,
            runtime_cache_dir=settings.runtime_cache_dir,
        )
        self.slots: dict[str, Slot] = {}
        for arg in settings.models:
            name, spec = parse_model_arg(arg)
            if name in self.slots:
                raise ValueError(f"two models are named {name!r}; name them with NAME=DIR")
            self.slots[name] = Slot(name, spec)
        self._thread = threading.Thread(target=self._load_then_check, name="model-loader", daemon=True)
        self.after_load: list[Callable[[ModelRegistry], None]] = []  # run when every model is loaded

    def start(self) -> None:
        """Load the models on a background thread, so /health can answer 503 while they load."""
        self._thread.start()

    def stop(self) -> None:
        for slot in self.slots.values():
            if slot.worker is not None:
                slot.worker.stop()

    def _load_then_check(self) -> None:
        self.load_now()
        self.check_references()

    def check_references_in_background(self) -> None:
        """`check_references` on a thread of its own (a server whose models loaded in its start-up)."""
        threading.Thread(target=self.check_references, name="reference-check", daemon=True).start()

    def check_references(self) -> None:
        """The reference agreement (runtime/agreement.py) of every ready model not yet checked.
        Run once the models are ready, so it adds nothing to the time until /health answers 200:
        /v1/models and /metrics carry it a moment later. The forwards it runs are safe beside the
        inference workers' (each thread has its own OpenVINO infer request)."""
        for slot in list(self.slots.values()):
            if slot.state == "ready" and slot.served is not None and not slot.served.agreement:
                try:
                    self._check_agreement(slot.name, slot.served)
                except BaseException as e:  # noqa: BLE001 - even a forward that exits: the check never takes the server down
                    log.error("model %s: the reference check failed: %s: %s", slot.name, type(e).__name__, e)

    def load_now(self) -> None:
        """Load the models in this thread and return when every one is ready or failed."""
        slots = list(self.slots.values())
        loaded: list[Embedder] = []
        for slot in (slots[i] for i in load_order([s.spec for s in slots])):
            try:
                model = self.loader(slot.name, slot.spec, tuple(loaded))
            except Exception as e:  # noqa: BLE001 - reported by /health and every request for it
                slot.state, slot.error = "failed", f"{type(e).__name__}: {e}"
                log.error("could not load model %s from %s: %s", slot.name, slot.spec, slot.error)
                continue
            loaded.append(model.model)
            slot.served, slot.worker = model, self._worker_for(slot.name)
            slot.worker.start()
            self.metrics.worker_up.labels(slot.name).set(1)
            slot.state = "ready"
            m = model.model
            log.info(
                "model %s ready (%s, %s, %d-d, %s%s)",
                slot.name,
                m.kind,
                m.space,
                m.dim,
                "+".join(m.modalities),
                f", images on {model.image_runtime}" if model.image_runtime else "",
            )
        for hook in self.after_load:
            hook(self)

    def query_model_for(self, manifest, name: str) -> str:
        """The name of a ready served model in `manifest`'s space with an image side (for a
        collection's queries); if none is served, the manifest's model is loaded as `name`."""
        for slot in self.slots.values():
            if slot.state == "ready" and slot.model.identity == manifest.identity and "image" in slot.model.modalities:
                return slot.name
        slot = Slot(name, manifest.model)
        model = self.loader(name, manifest.model, tuple(s.model for s in self.slots.values() if s.state == "ready"))
        if model.model.identity != manifest.identity:
            raise ValueError(
                f"the collection's model {manifest.model!r} now loads in space {model.model.space}, "
                f"not the collection's {manifest.identity}; serve a model of that space beside it"
            )
        slot.served, slot.worker = model, self._worker_for(name)
        slot.worker.start()
        self.metrics.worker_up.labels(name).set(1)
        slot.state = "ready"
        self.slots = {**self.slots, name: slot}  # replaced, not mutated: handlers may be iterating it
        return name

    def _check_agreement(self, name: str, served: ServedModel) -> None:
        """The reference set on the chosen runtimes vs PyTorch fp32: published in /v1/models and
        /metrics, logged, a warning below the bound."""
        started = time.perf_counter()
        agreement = reference_agreement(served.model)  # the packaged set, chosen runtimes vs PyTorch fp32
        self.metrics.observe_agreement(name, agreement)
        served.agreement = agreement  # /v1/models shows it from now on (after the gauge is set)
        for modality, a in agreement.items():
            if a.error is not None:
                continue
            low = a.min_cosine is not None and a.min_cosine < MIN_COSINE
            (log.warning if low else log.info)(
                "model %s %s on %s-%s: reference set (%d items) min cosine %.6f to PyTorch fp32%s",
                name,
                modality,
                a.runtime,
                a.precision,
                a.items,
                a.min_cosine,
                " (the runtime itself: 1.0 by construction)"
                if a.reference
                else (f", below {MIN_COSINE}" if low else ""),
            )
        log.info("model %s: reference agreement checked in %.3f s", name, time.perf_counter() - started)

    def _worker_for(self, name: str) -> InferenceWorker:
        gauge = self.metrics.queue_depth.labels(name)
        observer = BatchObserver(
            batch=lambda kind, size, seconds: self.metrics.observe_batch(name, kind[0], size, seconds),
            depth=gauge.set,
        )
        return InferenceWorker(
            name,
            max_queue_items=self.settings.max_queue_items,
            max_wait_s=None if self.settings.batch_wait_ms is None else self.settings.batch_wait_ms / 1000,
            observer=observer,
        )

    # -- request side ----------------------------------------------------------------------------
    @property
    def healthy(self) -> bool:
        return all(slot.status == "ready" for slot in self.slots.values())

    def statuses(self) -> dict[str, dict]:
        out = {}
        for slot in self.slots.values():
            status = {"status": slot.status}
            if slot.status == "failed":
                status["error"] = slot.error
            if slot.status == "dead":
                status["error"] = slot.worker.death
                self.metrics.worker_up.labels(slot.name).set(0)
            out[slot.name] = status
        return out

    def get(self, name: str | None) -> Slot:
        """The ready slot for `name` (None = the only model), or the ApiError to answer with."""
        if name is None or name == "":
            if len(self.slots) != 1:
                raise ApiError(422, f"say which model: this server has {', '.join(sorted(self.slots))}")
            name = next(iter(self.slots))
        slot = self.slots.get(name)
        if slot is None:
            raise ApiError(
                404,
                f"unknown model {name!r}; this server has {', '.join(sorted(self.slots))} (GET /v1/models lists them)",
            )
        retry = self.settings.retry_after_s
        if slot.status == "loading":
            raise retry_later(503, f"model {name!r} is still loading; retry shortly", retry)
        if slot.status == "failed":
            raise ApiError(503, f"model {name!r} failed to load: {slot.error}")
        if slot.status == "dead":
            raise retry_later(
                503,
                f"the inference worker for model {name!r} is not running ({slot.worker.death}); "
                "the server needs a restart",
                retry,
            )
        return slot

    def image_kind(self, slot: Slot) -> BatchKind:
        if ("image",) not in slot.kinds:
            model = slot.model
            # auto measured the batch size this runtime serves best at; the setting caps it
            budget = min(self.settings.max_batch_images, model.image_batch_size)
            slot.kinds[("image",)] = BatchKind(("image",), lambda items: model.image_rows(torch.stack(items)), budget)
        return slot.kinds[("image",)]

    def text_kind(self, slot: Slot) -> BatchKind:
        """Texts arrive as token ids (prefix included), so every task type shares one kind."""
        if ("text",) not in slot.kinds:
            # texts of similar length share a forward, on the runtime chosen for it
            rows = slot.model.text_rows_by_length
            slot.kinds[("text",)] = BatchKind(("text",), rows, self.settings.max_batch_tokens)
        return slot.kinds[("text",)]
