"""End-to-end HTTP throughput of `latentspace serve` against the raw batched forward of the same
model, on the same inputs, in one run; optionally against infinity-emb on the same weights.

    .venv/bin/python benchmarks/serve.py                       # random HF CLIP ViT-B/16, torch fp32
    .venv/bin/python benchmarks/serve.py --image-backend openvino --image-precision bf16 \
        --infinity /tmp/infvenv/bin/infinity_emb               # the README's comparison

For each server and concurrency (1, 8, 32 clients, each sending one image or one text per
request) it reports items/s and p50 / p99 latency. The raw forward is what the model does with no
HTTP at all, in batches of the server's --max-batch-images. The last line is the headline ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import fakes  # noqa: E402  (writes the random CLIP directory and draws the test images)

from latentspace.data.images import decode_image  # noqa: E402
from latentspace.serve.models import load_served_model  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_inputs(n: int, size: int) -> list[bytes]:
    concepts = fakes.CONCEPTS
    out = []
    for i in range(n):
        img = fakes.draw(concepts[i % len(concepts)], size=size, style=i % 3).convert("RGB")
        img = img.rotate(7 * i, expand=False, fillcolor=(255, 255, 255))  # all distinct
        out.append(fakes.png_bytes(img))
    return out


def raw_forward(served, images: list[bytes], batch: int, reps: int) -> tuple[float, torch.Tensor]:
    """Images/s of preprocessing-free batched forwards, and the embeddings."""
    pixels = torch.stack([served.model.preprocess_image(decode_image(b)) for b in images])
    forward = served.image_forward
    rows = torch.cat([forward(pixels[i : i + batch]) for i in range(0, len(pixels), batch)])  # warm-up
    started = time.perf_counter()
    for _ in range(reps):
        for i in range(0, len(pixels), batch):
            forward(pixels[i : i + batch])
    return reps * len(pixels) / (time.perf_counter() - started), F.normalize(rows, dim=-1)


def raw_text_forward(served, texts: list[str], batch: int, reps: int) -> float:
    model = served.model
    model.embed_texts(texts[:batch], "search_query")
    started = time.perf_counter()
    for _ in range(reps):
        for i in range(0, len(texts), batch):
            model.embed_texts(texts[i : i + batch], "search_query")
    return reps * len(texts) / (time.perf_counter() - started)


async def load(send, n_requests: int, concurrency: int) -> tuple[float, float, float, list]:
    """`concurrency` clients share `n_requests` requests; returns (req/s, p50 s, p99 s, answers)."""
    latencies, answers, next_index = [], [None] * n_requests, 0
    lock = asyncio.Lock()

    async def client(http: httpx.AsyncClient) -> None:
        nonlocal next_index
        while True:
            async with lock:
                i, next_index = next_index, next_index + 1
            if i >= n_requests:
                return
            t = time.perf_counter()
            answers[i] = await send(http, i)
            latencies.append(time.perf_counter() - t)

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=600, limits=limits) as http:
        started = time.perf_counter()
        await asyncio.gather(*(client(http) for _ in range(concurrency)))
        wall = time.perf_counter() - started
    lat = np.array(latencies)
    return n_requests / wall, float(np.percentile(lat, 50)), float(np.percentile(lat, 99)), answers


def wait_healthy(url: str, proc: subprocess.Popen, timeout: float = 600) -> None:
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


def ours(args, spec: str, images, texts, port: int):
    cmd = [sys.executable, "-m", "latentspace", "serve", "--model", f"bench={spec}", "--port", str(port),
           "--image-backend", args.image_backend, "--image-precision", args.image_precision,
           "--max-batch-images", str(args.batch), "--max-queue-items", "4096", "--log-level", "warning"]
    log = open(Path(args.out) / "ours.log", "w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(base + "/health", proc)

        async def send_image(http, i):
            r = await http.post(base + "/v1/embedding/image", files=[("images", ("x.png", images[i % len(images)]))])
            r.raise_for_status()
            return r.json()["embeddings"][0]

        async def send_text(http, i):
            r = await http.post(base + "/v1/embedding/text", json={"texts": [texts[i % len(texts)]], "task_type": "search_query"})
            r.raise_for_status()
            return r.json()["embeddings"][0]
        return run_levels(args, send_image, send_text)
    finally:
        proc.terminate()
        proc.wait(30)


def infinity(args, spec: str, images, port: int):
    path = spec.removeprefix("hf-clip:")
    cmd = [args.infinity, "v2", "--model-id", path, "--device", "cpu", "--engine", "torch", "--port", str(port),
           "--served-model-name", "bench", "--batch-size", str(args.batch)]
    log = open(Path(args.out) / "infinity.log", "w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    uris = ["data:image/png;base64," + base64.b64encode(b).decode() for b in images]
    try:
        wait_healthy(base + "/health", proc)

        async def send_image(http, i):
            r = await http.post(base + "/embeddings", json={"model": "bench", "input": [uris[i % len(uris)]], "modality": "image"})
            r.raise_for_status()
            return r.json()["data"][0]["embedding"]
        return run_levels(args, send_image, None)
    finally:
        proc.terminate()
        proc.wait(30)


def run_levels(args, send_image, send_text) -> dict:
    results = {}
    asyncio.run(load(send_image, 4, 2))  # warm-up
    for c in args.concurrency:
        n = max(args.requests, 2 * c)
        results[("image", c)] = asyncio.run(load(send_image, n, c))
        if send_text is not None:
            results[("text", c)] = asyncio.run(load(send_text, 8 * n, c))
    return results


def cosine_to(reference: torch.Tensor, answers: list, n: int) -> float:
    got = torch.tensor(answers[:n], dtype=torch.float32)
    return float(F.cosine_similarity(got, reference[: len(got)], dim=-1).min())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="model to serve (default: a random HF CLIP ViT-B/16 written to --out)")
    ap.add_argument("--out", default="artifacts/bench/serve")
    ap.add_argument("--image-backend", default="torch", choices=["torch", "openvino"])
    ap.add_argument("--image-precision", default="fp32", choices=["fp32", "bf16"])
    ap.add_argument("--infinity", help="path of an infinity_emb executable to compare against")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--requests", type=int, default=48, help="image requests per concurrency level")
    ap.add_argument("--images", type=int, default=32, help="distinct input images")
    ap.add_argument("--image-size", type=int, default=256)
    ap.add_argument("--batch", type=int, default=32, help="max images per forward, for the server and the raw forward")
    args = ap.parse_args()
    Path(args.out).mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    spec = args.model
    if spec is None:
        clip_dir = Path(args.out) / "clip-vit-b16-random"
        if not clip_dir.exists():
            fakes.make_hf_clip(clip_dir, seed=0, width=768, layers=12, heads=12, image_size=224, patch_size=16,
                               projection_dim=512, text_width=512, text_layers=12, text_heads=8, text_positions=77)
        spec = f"hf-clip:{clip_dir}"
    images = make_inputs(args.images, args.image_size)
    texts = [f"a photo of {c} number {i}" for i, c in enumerate(fakes.CONCEPTS * 20)]

    reference = load_served_model("ref", spec)
    ref_speed, ref_rows = raw_forward(reference, images, args.batch, reps=1)
    text_speed = raw_text_forward(reference, texts, 64, reps=3)
    if (args.image_backend, args.image_precision) != ("torch", "fp32"):
        fast = load_served_model("fast", spec, image_backend=args.image_backend, image_precision=args.image_precision)
        fast_speed, fast_rows = raw_forward(fast, images, args.batch, reps=1)
        del fast
    else:
        fast_speed, fast_rows = ref_speed, ref_rows
    del reference
    backend = f"{args.image_backend}-{args.image_precision}"
    print(f"raw forward, torch fp32: {ref_speed:.2f} images/s; {backend}: {fast_speed:.2f} images/s "
          f"({fast_speed / ref_speed:.2f}x), min cosine to fp32 {float(F.cosine_similarity(fast_rows, ref_rows).min()):.5f}")
    print(f"raw text forward (batches of 64): {text_speed:.1f} texts/s")

    results = ours(args, spec, images, texts, free_port())
    print(f"\nlatentspace serve ({backend}), one item per request:")
    print(f"{'kind':>6} {'clients':>7} {'items/s':>9} {'vs raw':>7} {'p50 ms':>8} {'p99 ms':>8}  min cos to fp32")
    for (kind, c), (rate, p50, p99, answers) in results.items():
        raw = fast_speed if kind == "image" else text_speed
        cos = f"{cosine_to(ref_rows, [answers[i] for i in range(len(images))], len(images)):.5f}" if kind == "image" else ""
        print(f"{kind:>6} {c:>7} {rate:>9.2f} {rate / raw:>7.2f} {p50 * 1000:>8.0f} {p99 * 1000:>8.0f}  {cos}")
    headline = results[("image", max(args.concurrency))][0]
    summary = f"{headline / fast_speed:.2f}x its own raw forward"

    if args.infinity:
        inf = infinity(args, spec, images, free_port())
        print("\ninfinity-emb (torch engine), one image per request:")
        for (kind, c), (rate, p50, p99, answers) in inf.items():
            cos = cosine_to(ref_rows, answers[: len(images)], len(images))
            print(f"{kind:>6} {c:>7} {rate:>9.2f} {rate / ref_speed:>7.2f} {p50 * 1000:>8.0f} {p99 * 1000:>8.0f}  {cos:.5f}")
        inf_rate = inf[("image", max(args.concurrency))][0]
        summary += f", {headline / inf_rate:.2f}x infinity-emb ({inf_rate:.2f} images/s)"
    print(f"\nheadline: latentspace serve, {backend}, {max(args.concurrency)} clients: {headline:.2f} images/s = {summary}")


if __name__ == "__main__":
    main()
