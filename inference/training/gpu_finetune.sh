#!/bin/bash
# Two fine-tuning runs of mouse-organs 2.4.0 side by side on one GPU, as run for 2.6.0 / 2.6.1 on an
# H200 with 16 cores (inference/models/README.md): ~9 minutes from a bare machine, sources included.
# The machine reaches no package index and has no ../shared: beforehand, put the Digimouse folder
# under .gpu/shared/realdata/digimouse and a nibabel wheel for its Python under .gpu/whl (ignored
# paths that travel with the command), then run `OUT=folder bash inference/training/gpu_finetune.sh`.
# Runs (for a check) on the CPU too: DEVICE=cpu PROCS=2 PER=1 WORKERS=1 BUDGET=200 MAXMIN=0.6.
set -u
T0=$(date +%s)
: "${OUT:?}" "${DEVICE:=cuda}" "${PROCS:=15}" "${PER:=4}" "${WORKERS:=7}" "${BUDGET:=555}" "${MAXMIN:=7.0}" "${STEPS:=300}"
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 PYTHONUNBUFFERED=1 LABSEG_SHARED_DIR=$PWD/.gpu/shared
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .gpu/whl/*.whl || exit 1
export PYTHONPATH=$PWD:/tmp/site
nvidia-smi -L; nproc
python3 -c "import torch, numpy, scipy, onnx, onnxruntime, nibabel; print(torch.__version__, torch.cuda.is_available(), numpy.__version__, scipy.__version__, onnx.__version__)" || exit 1
for i in $(seq 0 $((PROCS - 1))); do
  python3 -m inference.phantom.synth --pool data/pool --first $((1000 + PER * i)) --count "$PER" > "/tmp/synth$i.log" 2>&1 &
done
wait
echo "sources: $(ls data/pool | wc -l) after $(( $(date +%s) - T0 )) s"
LEFT=$(( BUDGET - ($(date +%s) - T0) ))
MIN=$(python3 -c "print(round(min($MAXMIN, ($LEFT - 75) / 60), 2))")
echo "left $LEFT s: training $MIN minutes"
(while true; do nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader 2>/dev/null; uptime; sleep 60; done > "$OUT/gpu.log" 2>&1 &)
run() {  # name version seed rolled
  timeout $((LEFT - 10)) python3 -m inference.training.finetune_synth --task organs \
    --init inference/models/mouse-organs/2.4.0/model.onnx --out "data/models/$1" --version "$2" \
    --pool data/pool --minutes "$MIN" --lr 4e-4 --seed "$3" --threads 1 --device "$DEVICE" \
    --variety 2.5 --digimouse-weight 0.45 --plain-body 0.15 --clipped 0.15 --rolled "$4" \
    --batch 8 --workers "$WORKERS" --steps-per-epoch "$STEPS" > "$OUT/$1.log" 2>&1
  echo "$1 exit $? after $(( $(date +%s) - T0 )) s"
}
run A 2.6.0 44 0 &
run B 2.6.1 45 0.2 &
wait
tar czf "$OUT/runs.tgz" data/checkpoints data/models/A data/models/B
ls -la "$OUT"; echo "total $(( $(date +%s) - T0 )) s"
