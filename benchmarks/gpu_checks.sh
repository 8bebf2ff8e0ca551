#!/usr/bin/env bash
# What a session lent a GPU runs there, in one call (the suite and CI have no GPU): the GPU-only tests, the bench's
# GPU section, the GPU inference paths side by side (and cudnn.benchmark), and the CUDA paths end to end (the demo trained on the GPU; eval and predict with the
# fp16 runtime; torchrun with NCCL, AMP fp16 and SyncBN, stopped and resumed). Each step has its own time limit so
# one failure still leaves the others' output. Logs go to $OUT (the device tool's folder) or ./gpu-checks.
#
#     bash benchmarks/gpu_checks.sh
set -uo pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
out="${OUT:-gpu-checks}"
mkdir -p "$out"
work="$(mktemp -d)"
step() {  # step NAME SECONDS COMMAND...: run, log to $out/NAME.log, print its exit status and wall time
    local name=$1 limit=$2
    shift 2
    local start=$SECONDS
    timeout "$limit" "$@" >"$out/$name.log" 2>&1
    echo "== $name: exit $? in $((SECONDS - start)) s" | tee -a "$out/summary.log"
}

{
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
    python3 -c "import torch, torchvision, onnxruntime; print('torch', torch.__version__, 'torchvision',
torchvision.__version__, 'onnxruntime', onnxruntime.__version__, 'cuDNN', torch.backends.cudnn.version())"
    lscpu | grep -E "Model name|^CPU\(s\)"
} >"$out/summary.log" 2>&1
cat "$out/summary.log"

step tests_gpu 120 python3 -m pytest -q -p no:cacheprovider tests/test_cuda_graphs.py
step bench_gpu 180 python3 -m atrous bench --only gpu --markdown "$out/bench_gpu.md"
step gpu_paths 150 python3 benchmarks/gpu_paths.py
step demo 150 python3 -m atrous demo --out "$work/runs" --data "$work/synthetic"
run="$work/runs/demo"
step eval_fp16 60 python3 -m atrous eval --config "$run/config.yaml" --weights "$run/checkpoints/best.pt" \
    --device cuda --runtime fp16
step predict_fp16 45 python3 -m atrous predict "$work/synthetic/VOCdevkit/VOC2012/JPEGImages" --weights "$run/checkpoints/best.pt" \
    --out "$work/predictions" --device cuda --runtime fp16
ddp=(--config src/atrous/configs/deeplabv3plus_r18-os16_synthetic_64x64_700.yaml --data-root "$work/synthetic"
     --name ddp --amp fp16 --iterations 60 train.val_every=30 train.save_every=30 out_dir="$work/runs")
step torchrun_stop 60 python3 -m torch.distributed.run --standalone --nproc_per_node=1 -m atrous train "${ddp[@]}" \
    --stop-at 30
step torchrun_resume 60 python3 -m torch.distributed.run --standalone --nproc_per_node=1 -m atrous train "${ddp[@]}" \
    --resume
ls "$work/runs/ddp" "$work/runs/ddp/checkpoints" >>"$out/summary.log" 2>&1
cp "$run/report.html" "$out/demo_report.html" 2>/dev/null
cat "$out/summary.log"
