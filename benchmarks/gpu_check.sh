#!/usr/bin/env bash
# The GPU check of issue 12, on one GPU in under 8 minutes: the CUDA tests, benchmarks/mfu.py
# for ViT-B-16 at 224 px (eager and compiled), ViT-L-14-CLIPA at 84 px with 8-token text and
# ViT-H-14-CLIPA at 84 px with microbatches and the tiled loss, and a tiny three-stage recipe
# (built-in digits, no files needed) end to end on the GPU. Prints one summary table: each
# check's status, seconds and last line (for mfu.py, the MFU).
#
#     benchmarks/gpu_check.sh [python]      # default: $PYTHON, else python
set -uo pipefail
PY=${1:-${PYTHON:-python}}
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
LOGS=${GPU_CHECK_LOGS:-$(mktemp -d)}
mkdir -p "$LOGS"
ROWS=()

check() {  # name, time limit in seconds, command...
    local name=$1 limit=$2 start status
    shift 2
    start=$(date +%s)
    if timeout "$limit" "$@" >"$LOGS/$name.log" 2>&1; then status=ok; else status="FAIL:$?"; fi
    ROWS+=("$(printf '%-24s %-8s %5ss  %s' "$name" "$status" "$(($(date +%s) - start))" "$(tail -n 1 "$LOGS/$name.log")")")
    echo "${ROWS[-1]}"
}

"$PY" -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print('torch', torch.__version__, torch.cuda.get_device_name())" || exit 1

RUN="$LOGS/three_stage"
cat >"$LOGS/three_stage.yaml" <<EOF
model: clipa-tiny-clipa
data: {source: digits}
stages:
  - {name: pretrain-24px, image_size: 24, text_length: 8, samples: 32768, batch_size: 512, lr: 3.0e-3, warmup: 10}
  - {name: finetune-32px-mask30, image_size: 32, image_reduction: {strategy: random, ratio: 0.3}, samples: 8192, batch_size: 512, lr: 5.0e-4, warmup: 2}
  - {name: finetune-40px-mask40, image_size: 40, image_reduction: {strategy: random, ratio: 0.4}, samples: 4096, batch_size: 512, lr: 2.0e-4, warmup: 2}
train: {device: cuda, compile: true, progress: false, checkpoint_every: 40, output_dir: $RUN}
EOF

MFU=("$PY" benchmarks/mfu.py --device cuda --warmup 3 --steps 10)
check cuda-tests 150 "$PY" -m pytest -q -p no:cacheprovider tests/test_cuda.py tests/test_loss.py -k "cuda or Cuda"
check mfu-B16-224 90 "${MFU[@]}" --model ViT-B-16 --image-size 224 --batch 256
check mfu-B16-224-compiled 150 "${MFU[@]}" --model ViT-B-16 --image-size 224 --batch 256 --compile
check mfu-L14-84-text8 90 "${MFU[@]}" --model ViT-L-14-CLIPA --image-size 84 --text-length 8 --batch 1024
check mfu-H14-84-micro-tiled 120 "${MFU[@]}" --model ViT-H-14-CLIPA --image-size 84 --text-length 8 \
    --batch 4096 --microbatch 1024 --loss tiled --steps 5
check three-stage-recipe 150 "$PY" -m clipa train "$LOGS/three_stage.yaml"

echo
echo "GPU check ($("$PY" -c 'import torch; print(torch.cuda.get_device_name())'), logs in $LOGS)"
printf '%-24s %-8s %6s  %s\n' check status time "last line"
printf '%s\n' "${ROWS[@]}"
