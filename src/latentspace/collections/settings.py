"""How a build runs (`BuildSettings`), and what of that decides the stored numbers (`VectorSettings`).

BuildSettings is declared once, here: `latentspace collection build` generates its options from
its fields (latentspace.options), with LATENTSPACE_BUILD_<SETTING> environment variables.

Both travel: BuildSettings to the engines (and to Ray actors, pickled), VectorSettings into the
plan, every unit, every part's metadata and the manifest, so a part copied elsewhere still says
how its vectors were made."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from latentspace.collections import store
from latentspace.collections.sources import MAX_ITEMS_PER_UNIT
from latentspace.config import PrecisionName, RuntimeName
from latentspace.data.images import MAX_PIXELS
from latentspace.options import Flag
from latentspace.runtime import RuntimeSettings, forward_settings, precision_field, runtime_field


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


# The panels of `latentspace collection build --help` that list these settings, in order.
PANELS = {"vectors": "Vectors", "input": "Input", "performance": "Performance", "index": "Index"}
ENV_PREFIX = "LATENTSPACE_BUILD_"  # LATENTSPACE_BUILD_<SETTING> sets a build setting


class BuildSettings(BaseModel):
    """How a build runs; `collection build`'s options are generated from these fields. `dtype`,
    `image_runtime` and `image_precision` shape the stored vectors and are recorded in every
    part; `batch_size` (None: what the runtime measured best) and `files_per_part` fix part
    boundaries and batch composition, so a resumed build keeps the ones its plan was made with."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    dtype: Annotated[store.Dtype | None, Flag("vectors")] = Field(
        None, description="float32 or float16 vectors (default: the collection's, else float32)"
    )
    image_runtime: Annotated[RuntimeName, Flag("vectors")] = runtime_field("image")
    image_precision: Annotated[PrecisionName, Flag("vectors")] = precision_field("image")
    files_per_part: Annotated[int, Flag("vectors")] = Field(
        1024, ge=1, le=MAX_ITEMS_PER_UNIT, description="files per Parquet part (folders and tables; shards: one each)"
    )
    max_pixels: Annotated[int, Flag("input")] = Field(
        MAX_PIXELS, ge=1, description="images with more pixels are skipped (checked before decoding)"
    )
    allow_urls: Annotated[bool, Flag("input")] = Field(
        False,
        description="fetch image URLs listed in a table (public addresses only, with the server's size and "
        "time limits)",
    )
    url_allowed_hosts: Annotated[tuple[str, ...], Flag("input", name="url-allowed-host")] = Field(
        (), description="hostname exempt from the public-address check (repeatable)"
    )
    batch_size: Annotated[int | None, Flag("performance")] = Field(
        None, ge=1, description="images per model forward (default: the best measured for the runtime)"
    )
    decode_threads: Annotated[int | None, Flag("performance")] = Field(
        None, ge=1, description="threads reading and decoding images (default: the CPUs this process may use)"
    )
    hnsw_min_rows: Annotated[int | None, Flag("index")] = Field(
        None,
        ge=1,
        description="build an HNSW index from this many items (default: the collection's setting, else when "
        "exact search gets slow)",
    )

    @model_validator(mode="after")
    def _runtime_and_precision_go_together(self) -> BuildSettings:
        _ = self.image
        return self

    @property
    def image(self) -> RuntimeSettings:
        return forward_settings(self, "image")

    def vector_settings(self, dtype: str) -> VectorSettings:
        return VectorSettings(dtype, self.image_runtime, self.image_precision)

    def but(self, **changes: Any) -> BuildSettings:
        """A copy with `changes`, validated like the original."""
        return BuildSettings(**{**self.model_dump(), **changes})
