"""A served model: an Embedder (models/load.py) on its runtimes (latentspace.runtime), and the
name clients call it by.

Everything model-specific (tokenising, preprocessing, forwards, the latent-space identity) comes
from the Embedder, so any spec `load` understands can be served. Only the forwards run on the
runtimes chosen for them, within cosine 0.999 of PyTorch fp32 (`--text-runtime torch
--text-precision fp32` keeps text bit-identical to local mode).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from latentspace.models.embedder import Embedder
from latentspace.models.load import default_name, load, parse_spec
from latentspace.runtime import AUTO, ModelOnRuntimes, RuntimeSettings, on_runtimes
from latentspace.runtime.agreement import Agreement


def parse_model_arg(arg: str) -> tuple[str, str]:
    """'NAME=SPEC' or 'SPEC' -> (name, spec); the default name is the directory's name. A NAME
    has no '/' or '?' (so 'DIR?text=OTHER' is a spec, not a name)."""
    name, sep, spec = arg.partition("=")
    if not sep or not name or "/" in name or "?" in name:
        return default_name(arg), arg
    return name, spec


@dataclass
class ServedModel:
    name: str
    spec: str
    model: ModelOnRuntimes
    # modality -> agreement of the chosen runtime with PyTorch fp32 on the reference set (measured
    # once, right after start-up: registry.check_references)
    agreement: dict[str, Agreement] = field(default_factory=dict)

    def describe(self) -> dict[str, Any]:
        out = {"id": self.name, "object": "model", "owned_by": "latentspace", **self.model.describe()}
        if self.agreement:
            out["reference_agreement"] = {modality: a.to_dict() for modality, a in self.agreement.items()}
        return out

    @property
    def image_runtime(self) -> str | None:
        choice = self.model.choices.get("image")
        return choice.name if choice else None


def load_served_model(
    name: str,
    spec: str,
    partners: Sequence[Embedder] = (),
    *,
    image: RuntimeSettings = AUTO,
    text: RuntimeSettings = AUTO,
    runtime_cache_dir: str | None = None,
) -> ServedModel:
    """Load `spec` (with `partners`, the models loaded before it) and put its forwards on the
    runtimes `image` / `text` ask for (auto: measured, see latentspace.runtime). Raises
    ValueError / OSError with a clear message."""
    model = load(spec, partners=[p.model if isinstance(p, ModelOnRuntimes) else p for p in partners])
    cache = Path(runtime_cache_dir) if runtime_cache_dir else None
    return ServedModel(name, spec, on_runtimes(model, image=image, text=text, cache_dir=cache))


def load_order(specs: Sequence[str]) -> list[int]:
    """Indices of `specs` in the order to load them: image models that take their text side from a
    partner (Nomic vision) after the others, so they find it already loaded."""
    from latentspace.models.nomic.vision_dir import is_nomic_vision_dir

    def pairs_later(spec: str) -> bool:
        base, _ = parse_spec(spec)
        try:
            return is_nomic_vision_dir(base)
        except OSError:
            return False

    return sorted(range(len(specs)), key=lambda i: pairs_later(specs[i]))
