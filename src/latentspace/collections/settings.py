"""How a build runs (`BuildSettings`), and what of that decides the stored numbers (`VectorSettings`).

Both travel: BuildSettings to the engines (and to Ray actors, pickled), VectorSettings into the
plan, every unit, every part's metadata and the manifest, so a part copied elsewhere still says
how its vectors were made."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from latentspace.collections import store
from latentspace.collections.sources import MAX_ITEMS_PER_UNIT
from latentspace.data.images import MAX_PIXELS
from latentspace.runtime import PRECISION_NAMES, RUNTIME_NAMES, RuntimeSettings


@dataclass(frozen=True)
class VectorSettings:
    """What, besides the model, decided the stored numbers."""

    dtype: str
    image_runtime: str
    image_precision: str
    normalized: bool = True

    @property
    def image(self) -> RuntimeSettings:
        return RuntimeSettings(runtime=self.image_runtime, precision=self.image_precision)  # type: ignore[arg-type]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> VectorSettings:
        return cls(d["dtype"], d["image_runtime"], d["image_precision"], bool(d.get("normalized", True)))


@dataclass(frozen=True)
class BuildSettings:
    """How a build runs. `dtype`, `image_runtime` and `image_precision` shape the stored vectors
    and are recorded in every part; `batch_size` (None: what the runtime measured best) and
    `files_per_part` fix part boundaries and batch composition, so a resumed build keeps the ones
    its plan was made with."""

    batch_size: int | None = None
    files_per_part: int = 1024
    dtype: str | None = None  # None: the collection's dtype, float32 for a new one
    max_pixels: int = MAX_PIXELS
    allow_urls: bool = False
    url_allowed_hosts: tuple[str, ...] = ()
    image_runtime: str = "auto"
    image_precision: str = "auto"
    decode_threads: int | None = None  # None: the CPUs this process may use
    hnsw_min_rows: int | None = None  # HNSW from this many rows (None: the collection's setting, else by size)

    def __post_init__(self) -> None:
        if (self.batch_size is not None and self.batch_size < 1) or self.files_per_part < 1:
            raise ValueError("batch_size and files_per_part must be at least 1")
        if self.files_per_part > MAX_ITEMS_PER_UNIT:
            raise ValueError(f"files_per_part must be at most {MAX_ITEMS_PER_UNIT}")
        if self.dtype is not None and self.dtype not in store.DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(store.DTYPES)}, not {self.dtype!r}")
        if self.image_runtime not in RUNTIME_NAMES or self.image_precision not in PRECISION_NAMES:
            raise ValueError(
                f"image_runtime must be one of {', '.join(RUNTIME_NAMES)} and image_precision one "
                f"of {', '.join(PRECISION_NAMES)}"
            )
        _ = self.image  # fails on a runtime and precision that do not go together

    @property
    def image(self) -> RuntimeSettings:
        return RuntimeSettings(runtime=self.image_runtime, precision=self.image_precision)  # type: ignore[arg-type]

    def vector_settings(self, dtype: str) -> VectorSettings:
        return VectorSettings(dtype, self.image_runtime, self.image_precision)
