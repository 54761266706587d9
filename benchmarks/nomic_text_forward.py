"""latentspace's native NomicBERT forward versus transformers' own NomicBertModel (>= 5), on CPU.

Same random weights (nomic-embed-text's shapes by default: 768 wide, 12 layers, 12 heads; --size
small for a quick run), same right-padded batch (32 texts of mixed length, 8 to 128 tokens;
--min-len 128 for one without padding), fp32,
inference mode. Runs alternate between the two so drift (thermal, other load) hits both alike.
Prints the machine's fp32 matmul rate for scale, both timings, the largest difference over real
(non-padding) tokens, and last the speed ratio: native speed / transformers speed (> 1 = faster).

    .venv/bin/python benchmarks/nomic_text_forward.py [--size base|small] [--batch 32] [--min-len 8] [--max-len 128]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch
from machine import matmul_gflops  # benchmarks/machine.py

from latentspace.models.nomic.text import NomicBertText
from latentspace.models.nomic.text_config import NomicTextConfig
from latentspace.models.nomic.text_dir import load_nomic_text, save_nomic_text

SIZES = {
    "base": NomicTextConfig(hidden=768, layers=12, heads=12, inner=3072, vocab_size=30528),
    "small": NomicTextConfig(hidden=256, layers=4, heads=4, inner=768, vocab_size=30528),
}


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def random_model(config: NomicTextConfig, seed: int) -> NomicBertText:
    """Random weights perturbed away from identity, like the parity tests'."""
    torch.manual_seed(seed)
    model = NomicBertText(config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.normal_(0, 0.5)
            elif "norm" in name or name.startswith("emb_ln"):
                p.normal_(1, 0.5)
            else:
                p.normal_(0, 0.1)
    return model.eval()


def padded_batch(n: int, min_len: int, max_len: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(min_len, max_len + 1, (n,), generator=g).tolist()
    lengths[0] = max_len
    ids = torch.zeros(n, max_len, dtype=torch.long)
    mask = torch.zeros(n, max_len, dtype=torch.long)
    for i, length in enumerate(lengths):
        ids[i, :length] = torch.randint(1000, 30000, (length,), generator=g)
        ids[i, 0], ids[i, length - 1] = 101, 102
        mask[i, :length] = 1
    return ids, mask


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", choices=sorted(SIZES), default="base")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--max-len", type=int, default=128)
    ap.add_argument("--min-len", type=int, default=8, help="= --max-len for a batch without padding")
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args()

    from transformers import AutoModel

    config = SIZES[args.size]
    with tempfile.TemporaryDirectory() as tmp:
        save_nomic_text(random_model(config, seed=0), tmp)
        native = load_nomic_text(tmp)
        reference = AutoModel.from_pretrained(tmp, local_files_only=True).eval()
    ids, mask = padded_batch(args.batch, min(args.min_len, args.max_len), args.max_len, seed=1)

    def run_native() -> torch.Tensor:
        return native(ids, mask)

    def run_reference() -> torch.Tensor:
        return reference(input_ids=ids, attention_mask=mask).last_hidden_state

    times: dict[str, list[float]] = {"native": [], "transformers": []}
    with torch.inference_mode():
        got, want = run_native(), run_reference()  # warm-up, and the outputs compared
        for r in range(args.repeats):
            order = [("native", run_native), ("transformers", run_reference)]
            for name, fn in order if r % 2 == 0 else order[::-1]:
                times[name].append(_timed(fn))
    delta = float(((got - want).abs() * mask[..., None]).max())

    tokens = int(mask.sum())
    print(f"cpu: {cpu_name()}; torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"fp32 matmul 2048x2048: {matmul_gflops():.0f} GFLOP/s")
    print(
        f"model: {args.size} ({config.hidden} wide, {config.layers} layers, {config.heads} heads, "
        f"MLP {config.inner}); batch {args.batch} x {args.max_len} padded, {tokens} real tokens; "
        f"{args.repeats} alternating runs each"
    )
    for name, ts in times.items():
        print(f"{name:>12}: median {statistics.median(ts) * 1e3:8.1f} ms, best {min(ts) * 1e3:8.1f} ms")
    print(f"max |delta| over real tokens: {delta:.3g} (output scale {float(want.abs().max()):.3g})")
    best = min(times["transformers"]) / min(times["native"])
    print(f"native speed / transformers speed (best of {args.repeats}): {best:.3f}")
    ratio = statistics.median(times["transformers"]) / statistics.median(times["native"])
    print(f"native speed / transformers speed (median): {ratio:.3f}")


if __name__ == "__main__":
    main()
