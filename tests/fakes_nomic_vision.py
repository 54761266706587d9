"""Tiny random Nomic Embed Vision directories, laid out like the published one.

`write_tiny_nomic_vision_dir` writes config.json (model_type nomic_bert, architectures
["NomicVisionModel"], the published auto_map, `n_inner` as a float like the real file),
preprocessor_config.json (squash to img_size, CLIP mean/std) and model.safetensors with seeded
random weights perturbed away from identity, so wrong layouts show up as large differences.
The config is written out by hand (not through `NomicVisionConfig.to_hf_dict`) so that loader tests
read an independently written published layout.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]


def perturb_(module: nn.Module, seed: int = 0) -> nn.Module:
    """In place: LayerNorm weights 1 + N(0, .5), LayerNorm biases N(0, .5), everything else N(0, .1)."""
    gen = torch.Generator().manual_seed(seed)
    norm_params = {
        id(p): name
        for m in module.modules()
        if isinstance(m, nn.LayerNorm)
        for name, p in m.named_parameters(recurse=False)
    }
    with torch.no_grad():
        for p in module.parameters():
            noise = torch.randn(p.shape, generator=gen, dtype=torch.float32)
            kind = norm_params.get(id(p))
            if kind == "weight":
                p.copy_(1 + 0.5 * noise)
            elif kind == "bias":
                p.copy_(0.5 * noise)
            else:
                p.copy_(0.1 * noise)
    return module


def tiny_vision_config(
    *,
    img_size: int = 32,
    patch_size: int = 16,
    hidden: int = 32,
    layers: int = 2,
    heads: int = 4,
    inner: int | None = None,
) -> dict:
    """A published-layout vision config.json dict with tiny shapes."""
    grid = img_size // patch_size
    if inner is None:
        inner = (int(8 * hidden / 3) + 255) // 256 * 256  # what the published 768 -> 2048 rule gives
    return {
        "activation_function": "swiglu",
        "architectures": ["NomicVisionModel"],
        "attn_pdrop": 0.0,
        "auto_map": {
            "AutoConfig": "nomic-ai/nomic-bert-2048--configuration_hf_nomic_bert.NomicBertConfig",
            "AutoModel": "nomic-ai/nomic-bert-2048--modeling_hf_nomic_bert.NomicVisionModel",
        },
        "causal": False,
        "embd_pdrop": 0.0,
        "global_pool": None,
        "img_size": img_size,
        "layer_norm_epsilon": 1e-06,
        "learned_pos_embedding": False,
        "mask_token": False,
        "mlp_fc1_bias": True,
        "mlp_fc2_bias": True,
        "model_type": "nomic_bert",
        "n_embd": hidden,
        "n_head": heads,
        "n_inner": float(inner),
        "n_layer": layers,
        "no_cls_token": False,
        "no_embed_class": False,
        "no_last_ln": True,
        "norm_mlp": True,
        "num_channels": 3,
        "patch_embed_bias": True,
        "patch_size": patch_size,
        "prenorm": True,
        "qkv_proj_bias": True,
        "ref_feat_shape": [grid, grid],
        "register_tokens": 0,
        "resid_pdrop": 0.0,
        "rotary_emb_base": 10000,
        "rotary_emb_fraction": 0,
        "sinusoidal_pos_embedding": False,
        "torch_dtype": "float32",
        "use_pos_embed": True,
        "use_rotary_pos_emb": True,
        "vocab_size": 0,
    }


def tiny_preprocessor_config(img_size: int = 32) -> dict:
    return {
        "crop_size": {"height": img_size, "width": img_size},
        "do_center_crop": True,
        "do_convert_rgb": True,
        "do_normalize": True,
        "do_rescale": True,
        "do_resize": True,
        "image_mean": CLIP_MEAN,
        "image_processor_type": "CLIPImageProcessor",
        "image_std": CLIP_STD,
        "resample": 3,
        "rescale_factor": 0.00392156862745098,
        "size": {"height": img_size, "width": img_size},
    }


def write_tiny_nomic_vision_dir(
    path: str | Path,
    seed: int = 0,
    *,
    img_size: int = 32,
    patch_size: int = 16,
    hidden: int = 32,
    layers: int = 2,
    heads: int = 4,
    inner: int | None = None,
) -> Path:
    """Write a random-weight Nomic vision model directory at `path` (created if needed); returns it."""
    from safetensors.torch import save_file

    from latentspace.models.nomic.vision import NomicVision
    from latentspace.models.nomic.vision_config import NomicVisionConfig

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    config = tiny_vision_config(
        img_size=img_size, patch_size=patch_size, hidden=hidden, layers=layers, heads=heads, inner=inner
    )
    model = perturb_(NomicVision(NomicVisionConfig.from_hf_dict(config)), seed)
    (path / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    (path / "preprocessor_config.json").write_text(json.dumps(tiny_preprocessor_config(img_size), indent=2) + "\n")
    save_file(
        {k: v.contiguous() for k, v in model.state_dict().items()},
        str(path / "model.safetensors"),
        metadata={"format": "pt"},
    )
    return path
