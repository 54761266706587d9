"""Serving speed in one run: `latentspace serve` against its own raw batched forwards and, with
--infinity, against infinity-emb on the same weights and the same inputs.

    .venv/bin/python benchmarks/serve.py                                   # ours vs raw forwards
    .venv/bin/python benchmarks/serve.py --image-model artifacts/quickstart/model  # the default model
    .venv/bin/python benchmarks/serve.py --infinity /tmp/infvenv/bin/infinity_emb

Models (written to --out on first use, random weights): a Hugging Face CLIP ViT-B/16 for images
(or --image-model SPEC) and a BERT-base sentence-transformers directory (mean pooling) for text:
shapes of real models that both servers load. What it prints:

1. the machine: CPU model and the features that matter (AVX2, AVX-512, VNNI, bf16, AMX), torch
   threads and the fp32 matmul rate;
2. every image runtime's raw forward (images/s, cosine to PyTorch fp32), as `--image-runtime
   auto` measures them, and which one auto picks; the raw batched text forward;
3. for each server and 1 / 8 / 32 clients, each sending ONE image or ONE text per request:
   items/s, p50 and p99 latency, the ratio to the raw forward, the minimum cosine of the answers
   to PyTorch fp32 (images) or to local mode (texts).

Clients are a few lines of HTTP/1.1 over asyncio streams with keep-alive, so the load generator
costs little CPU (it shares the machine with the server, as httpx would, but much less of it).
The last lines are the headline ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import orjson
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from machine import matmul_gflops  # noqa: E402  (benchmarks/machine.py)

from latentspace.data.images import decode_image  # noqa: E402
from latentspace.models.load import load  # noqa: E402
from latentspace.runtime import RuntimeSettings, cpu_info, on_runtimes  # noqa: E402

import fakes  # noqa: E402  (writes the random model directories and draws the test images)


def _timed(fn) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- inputs -----------------------------------------------------------------------------------------


def make_images(n: int, size: int) -> list[bytes]:
    out = []
    for i in range(n):
        img = fakes.draw(fakes.CONCEPTS[i % len(fakes.CONCEPTS)], size=size, style=i % 3).convert("RGB")
        out.append(fakes.png_bytes(img.rotate(7 * i, fillcolor=(255, 255, 255))))  # all distinct
    return out


def make_texts(n: int) -> list[str]:
    """Sentences of 6 to 40 words: what a search box and a document chunker send."""
    rng = np.random.default_rng(0)
    words = [
        "red",
        "green",
        "blue",
        "heart",
        "cat",
        "dog",
        "pizza",
        "rocket",
        "rain",
        "snow",
        "music",
        "market",
        "city",
        "river",
        "night",
        "photo",
        "of",
        "a",
        "the",
        "with",
        "on",
        "under",
        "small",
        "large",
        "old",
        "new",
        "bright",
        "dark",
        "happy",
        "quiet",
        "fast",
    ]
    return [f"{i}: " + " ".join(rng.choice(words, int(rng.integers(6, 41)))) for i in range(n)]


def multipart(model: str, image: bytes, boundary: str) -> bytes:
    return (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="model"\r\n\r\n{model}\r\n'
            f'--{boundary}\r\nContent-Disposition: form-data; name="images"; filename="x.png"\r\n'
            f"Content-Type: image/png\r\n\r\n"
        ).encode()
        + image
        + f"\r\n--{boundary}--\r\n".encode()
    )


# -- a lean HTTP/1.1 keep-alive client ------------------------------------------------------------


@dataclass
class Request:
    path: str
    body: bytes
    content_type: str


class Connection:
    def __init__(self, host: str, port: int):
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def send(self, request: Request) -> bytes:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        head = (
            f"POST {request.path} HTTP/1.1\r\nHost: {self.host}\r\nContent-Type: {request.content_type}\r\n"
            f"Content-Length: {len(request.body)}\r\n\r\n"
        ).encode()
        self.writer.write(head + request.body)
        status = await self.reader.readline()
        length = 0
        while (line := await self.reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            if name.strip().lower() == "content-length":
                length = int(value)
        body = await self.reader.readexactly(length)
        if b" 200 " not in status:
            raise RuntimeError(f"{request.path}: {status.decode().strip()} {body[:300]!r}")
        return body

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


async def _load(port: int, requests: list[Request], concurrency: int) -> tuple[float, float, float, list[bytes]]:
    """`concurrency` clients on their own connections share the requests; (items/s, p50, p99, bodies)."""
    answers: list[bytes] = [b""] * len(requests)
    latencies: list[float] = []
    queue = iter(range(len(requests)))

    async def client() -> None:
        connection = Connection("127.0.0.1", port)
        try:
            for i in queue:
                started = time.perf_counter()
                answers[i] = await connection.send(requests[i])
                latencies.append(time.perf_counter() - started)
        finally:
            connection.close()

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    wall = time.perf_counter() - started
    return len(requests) / wall, float(np.percentile(latencies, 50)), float(np.percentile(latencies, 99)), answers


def run_levels(port: int, image_requests, text_requests, levels: list[int], rows) -> dict:
    asyncio.run(_load(port, image_requests[:4] + text_requests[:8], 2))  # warm-up
    results = {}
    for c in levels:
        for kind, requests in (("image", image_requests), ("text", text_requests)):
            n = len(requests) if c > 1 else max(4, len(requests) // 4)
            rate, p50, p99, bodies = asyncio.run(_load(port, requests[:n], c))
            results[(kind, c)] = (rate, p50, p99, rows(kind, bodies))
    return results


# -- servers --------------------------------------------------------------------------------------


def wait_healthy(url: str, proc: subprocess.Popen, timeout: float = 900) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}; see its log")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    raise RuntimeError("server did not become healthy")


def ours(args, image_spec: str, text_spec: str, images, texts, levels) -> dict:
    port = free_port()
    cmd = [
        sys.executable,
        "-m",
        "latentspace",
        "serve",
        "--model",
        f"img={image_spec}",
        "--model",
        f"txt={text_spec}",
        "--port",
        str(port),
        "--image-runtime",
        args.image_runtime,
        "--image-precision",
        args.image_precision,
        "--max-batch-images",
        str(args.batch),
        "--max-queue-items",
        "4096",
        "--log-level",
        "warning",
    ]
    proc = subprocess.Popen(cmd, stdout=open(Path(args.out) / "ours.log", "w"), stderr=subprocess.STDOUT)
    try:
        wait_healthy(f"http://127.0.0.1:{port}/health", proc)
        boundary = uuid.uuid4().hex
        image_requests = [
            Request(
                "/v1/embedding/image",
                multipart("img", images[i % len(images)], boundary),
                f"multipart/form-data; boundary={boundary}",
            )
            for i in range(args.image_requests)
        ]
        text_requests = [
            Request(
                "/v1/embedding/text",
                orjson.dumps({"model": "txt", "texts": [texts[i % len(texts)]], "task_type": "search_query"}),
                "application/json",
            )
            for i in range(args.text_requests)
        ]
        return run_levels(
            port,
            image_requests,
            text_requests,
            levels,
            lambda kind, bodies: [orjson.loads(b)["embeddings"][0] for b in bodies],
        )
    finally:
        proc.terminate()
        proc.wait(30)


def infinity(args, image_dir: Path, text_dir: Path, images, texts, levels) -> dict:
    import base64

    port = free_port()
    cmd = [
        args.infinity,
        "v2",
        "--model-id",
        str(image_dir),
        "--model-id",
        str(text_dir),
        "--served-model-name",
        "img",
        "--served-model-name",
        "txt",
        "--device",
        "cpu",
        "--engine",
        "torch",
        "--engine",
        "torch",
        "--batch-size",
        str(args.batch),
        "--batch-size",
        str(args.batch),
        "--port",
        str(port),
    ]
    proc = subprocess.Popen(cmd, stdout=open(Path(args.out) / "infinity.log", "w"), stderr=subprocess.STDOUT)
    try:
        wait_healthy(f"http://127.0.0.1:{port}/health", proc)
        uris = ["data:image/png;base64," + base64.b64encode(b).decode() for b in images]
        image_requests = [
            Request(
                "/embeddings",
                orjson.dumps({"model": "img", "input": [uris[i % len(uris)]], "modality": "image"}),
                "application/json",
            )
            for i in range(args.image_requests)
        ]
        # (a plain BERT directory has no task prefixes, so both servers embed exactly these texts)
        text_requests = [
            Request("/embeddings", orjson.dumps({"model": "txt", "input": [texts[i % len(texts)]]}), "application/json")
            for i in range(args.text_requests)
        ]
        return run_levels(
            port,
            image_requests,
            text_requests,
            levels,
            lambda kind, bodies: [orjson.loads(b)["data"][0]["embedding"] for b in bodies],
        )
    finally:
        proc.terminate()
        proc.wait(30)


def min_cosine(answers: list, reference: torch.Tensor) -> float:
    got = torch.tensor(answers, dtype=torch.float32)
    return float(F.cosine_similarity(got, reference[: len(got)], dim=-1).min())


# -- main -----------------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="artifacts/bench/serve")
    ap.add_argument("--image-runtime", default="auto", choices=["auto", "torch", "openvino", "onnxruntime"])
    ap.add_argument("--image-precision", default="auto", choices=["auto", "fp32", "bf16", "int8"])
    ap.add_argument(
        "--image-model",
        default="clip",
        help="clip (a random CLIP ViT-B/16) or a model spec, e.g. artifacts/quickstart/model (the default model)",
    )
    ap.add_argument("--infinity", help="path of an infinity_emb executable to compare against")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--image-requests", type=int, default=96, help="image requests per concurrency level")
    ap.add_argument("--text-requests", type=int, default=640, help="text requests per concurrency level")
    ap.add_argument("--image-size", type=int, default=256)
    ap.add_argument("--batch", type=int, default=32, help="max images per forward (both servers) and the raw batch")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    cpu = cpu_info()
    print(
        f"machine: {cpu.summary()}; torch {torch.__version__}, {torch.get_num_threads()} threads; "
        f"fp32 matmul {matmul_gflops():.0f} GFLOP/s"
    )
    clip_dir, bert_dir = out / "clip-vit-b16-random", out / "bert-base-random"
    if args.image_model != "clip":
        clip_dir = Path(args.image_model)
    elif not clip_dir.exists():
        fakes.make_hf_clip(clip_dir, seed=0, **fakes.CLIP_VIT_B16)
    if not bert_dir.exists():
        fakes.make_st_bert(bert_dir)
    images, texts = make_images(32, args.image_size), make_texts(256)

    # raw forwards: the image forward on the runtime the server will run (auto: measured here and
    # cached, so the server finds the same choice), and the text forward
    exact, text_model = load(str(clip_dir)), load(str(bert_dir))
    image_model = on_runtimes(exact, image=RuntimeSettings(runtime=args.image_runtime, precision=args.image_precision))
    pixels = torch.stack([exact.preprocess_image(decode_image(b)) for b in images])
    choice = image_model.choices["image"]
    print(f"\nimage runtimes ({exact.name}{', cached calibration' if choice.cached else ''}):")
    for m in choice.measurements:
        speed = f"{m.items_per_s:7.2f} images/s, cosine {m.min_cosine:.5f}" if m.items_per_s and m.min_cosine else ""
        print(f"  {m.name:<17} {speed}{'  (' + m.skipped + ')' if m.skipped else ''}")
    backend = choice.name
    print(f"images on {choice.name}: {choice.reason}")
    batch = min(args.batch, image_model.image_batch_size)
    with torch.inference_mode():
        reference = F.normalize(exact.image_rows(pixels), dim=-1)
        forward = image_model.image_rows
        forward(pixels[:batch])
        image_raw = len(pixels) / min(
            _timed(lambda: [forward(pixels[i : i + batch]) for i in range(0, len(pixels), batch)]) for _ in range(2)
        )
        ids = text_model.tokenize(texts, "search_query")
        text_model.text_rows(ids[:32])
        text_raw = len(ids) / min(
            _timed(lambda: [text_model.text_rows_by_length(ids[i : i + 32]) for i in range(0, len(ids), 32)])
            for _ in range(2)
        )
        text_reference = text_model.embed_texts(texts, "search_query")
    print(
        f"raw batched forwards: images ({backend}, batch {batch}) {image_raw:.2f}/s; "
        f"text (batch 32, {np.mean([len(i) for i in ids]):.0f} tokens on average) {text_raw:.1f}/s"
    )
    image_model = exact = text_model = None  # free the weights before the servers load theirs

    def table(title: str, results: dict) -> None:
        print(f"\n{title}, one item per request:")
        print(f"{'kind':>6} {'clients':>7} {'items/s':>9} {'vs raw':>7} {'p50 ms':>8} {'p99 ms':>8}  min cosine")
        for (kind, c), (rate, p50, p99, rows) in results.items():
            raw = image_raw if kind == "image" else text_raw
            ref = reference if kind == "image" else text_reference
            n = len(images) if kind == "image" else len(texts)
            cos = min_cosine(rows[:n], ref)
            print(f"{kind:>6} {c:>7} {rate:>9.2f} {rate / raw:>7.2f} {p50 * 1000:>8.0f} {p99 * 1000:>8.0f}  {cos:.5f}")

    top = max(args.concurrency)
    mine = ours(args, str(clip_dir), str(bert_dir), images, texts, args.concurrency)
    table(f"latentspace serve (images on {backend})", mine)
    lines = [
        f"images at {top} clients: {mine[('image', top)][0]:.2f}/s = {mine[('image', top)][0] / image_raw:.2f}x "
        f"the raw forward",
        f"text at {top} clients: {mine[('text', top)][0]:.1f}/s = "
        f"{mine[('text', top)][0] / text_raw:.2f}x the raw batched forward",
    ]
    if args.infinity:
        theirs = infinity(args, clip_dir, bert_dir, images, texts, args.concurrency)
        table("infinity-emb (torch engine)", theirs)
        for kind in ("image", "text"):
            ratio = mine[(kind, top)][0] / theirs[(kind, top)][0]
            lines.append(
                f"{kind} at {top} clients: {ratio:.2f}x infinity-emb ({theirs[(kind, top)][0]:.2f}/s); p99 "
                f"{mine[(kind, top)][2] * 1000:.0f} ms vs {theirs[(kind, top)][2] * 1000:.0f} ms"
            )
    print("\nheadline:\n  " + "\n  ".join(lines))


if __name__ == "__main__":
    main()
