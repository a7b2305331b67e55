#!/usr/bin/env bash
# Everything the GPU work asks for, in one command (a lent GPU machine is short-lived):
#
#   bash benchmarks/gpu_check.sh OUTDIR STAGE...      stages: info tests smoke profile parts bench train
#
#   info   the GPU, driver, CuPy and PyTorch versions
#   tests  tests/test_gpu.py and tests/test_cuda_kernels.py (every op and each net's step, GPU vs CPU)
#   smoke  the benchmark harness at tiny sizes, and one small epoch of `segnets.train --device gpu`
#   profile  each net's full-width training step op by op (benchmarks/profile_step.py)
#   parts  one convolution's parts against cuDNN's (benchmarks/conv_parts.py)
#   bench  `python -m benchmarks.run --device gpu --suite all` (JSON and Markdown into OUTDIR)
#   train  each net at full width (FCN/DeconvNet 224x224 crops, U-Net 572 valid) for a few epochs
#
# Every stage runs even when an earlier one fails; all output also goes to OUTDIR/log.txt.
set -u
out=${1:?usage: gpu_check.sh OUTDIR STAGE...}
shift
mkdir -p "$out"
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
py=${PYTHON:-python3}
exec > >(tee -a "$out/log.txt") 2>&1

stage() { echo; echo "=== $1 ($(date -u +%H:%M:%S))"; }
epochs() {  # epoch, train loss and seconds of a run's metrics.jsonl
  $py -c "import json,sys; [print('  epoch', r['epoch'], 'loss %.4f' % r['train_loss'], '%.1f s' % r['seconds']) for r in map(json.loads, open(sys.argv[1]))]" "$1/metrics.jsonl"
}

for s in "$@"; do
  case $s in
    info)
      stage info
      nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv
      $py -c "import cupy, torch, numpy; print('cupy', cupy.__version__, 'cuda', cupy.cuda.runtime.runtimeGetVersion(), '| torch', torch.__version__, torch.version.cuda, '| numpy', numpy.__version__)"
      ;;
    tests)
      stage tests
      timeout 400 $py -m pytest -q -p no:cacheprovider --tb=short -rs tests/test_gpu.py tests/test_cuda_kernels.py
      ;;
    smoke)
      stage smoke
      timeout 200 $py -m benchmarks.run --device gpu --suite all --quick --output-dir "$out/quick"
      timeout 200 $py -m segnets.train --net deconvnet --device gpu --epochs 2 --data-opt num_train=64 \
        --data-opt num_val=16 --output-dir "$out/smoke-train" && epochs "$out/smoke-train"
      rm -rf "$out/quick" "$out/smoke-train"
      ;;
    profile)
      stage profile
      timeout 300 $py -m benchmarks.profile_step --size full --device gpu
      ;;
    parts)
      stage parts
      timeout 200 $py -m benchmarks.conv_parts
      ;;
    bench)
      stage bench
      timeout 500 $py -m benchmarks.run --device gpu --suite all --output-dir "$out"
      ;;
    train)
      stage train
      common="--device gpu --width 64 --epochs ${EPOCHS:-3} --data-opt num_train=${NUM_TRAIN:-96} --data-opt num_val=16"
      for net in fcn32s fcn16s fcn8s deconvnet; do
        opts="--model-opt fc_kernel=7"
        [ $net != deconvnet ] && opts="$opts --model-opt pad100=true"
        timeout 300 $py -m segnets.train --net $net $common --crop-size 224 --data-opt image_size=256 $opts \
          --output-dir "$out/train-$net" && epochs "$out/train-$net"
      done
      timeout 300 $py -m segnets.train --net unet $common --crop-size 572 --data-opt image_size=572 \
        --model-opt padding=valid --model-opt batch_norm=false --output-dir "$out/train-unet" && epochs "$out/train-unet"
      rm -rf "$out"/train-*
      ;;
    *) echo "unknown stage $s"; exit 2 ;;
  esac
done
