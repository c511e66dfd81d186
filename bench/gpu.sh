#!/usr/bin/env bash
# The one-shot GPU acceptance run: training (bf16, compile) and MFU against transformers, a one-process torchrun
# DDP run on NCCL, generation against transformers' static-cache generate, LAMBADA scoring against lm-eval.
# Under 8 minutes on one H100/H200-class GPU, no network; writes gpu-results.json and prints a table.
#   bash bench/gpu.sh            # on the GPU machine
#   bash bench/gpu.sh --smoke    # every step on the CPU at tiny sizes (tests/test_gpu_script.py runs it)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}"
export GPT2KIT_GPT2_VOCAB="${GPT2KIT_GPT2_VOCAB:-$(cd .. && pwd)/shared/data/gpt2-vocab/gpt2.tiktoken}"
exec "$PYTHON" bench/gpu.py "$@"
