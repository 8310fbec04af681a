#!/usr/bin/env bash
# Two-stage training on Slurm (`sbatch run/run.sh`) or a workstation (`bash run/run.sh`).
# Under Slurm, srun starts one task per GPU and Lightning's DDP picks up the Slurm environment.
# Extra arguments are passed to `pneumonia-cxr train`, e.g.:
#   sbatch run/run.sh --dataset_path /data/chest_xray --backbone resnet50
# Scoring mode: a first argument `predict` runs `pneumonia-cxr predict` on Lightning's
# prediction loop instead (one task per GPU, rows joined by rank 0), e.g.:
#   sbatch run/run.sh predict /archive --output results.csv --model_path model.pt
#SBATCH --job-name=pneumonia-cxr
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=4
#SBATCH --gpus-per-node=4
#SBATCH --cpus-per-task=8
#SBATCH --mem=64G
#SBATCH --time=04:00:00
#SBATCH --output=logs/%x-%j.out
set -euo pipefail

REPO_DIR="${REPO_DIR:-${SLURM_SUBMIT_DIR:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}}"
cd "$REPO_DIR"
mkdir -p logs
PYTHON="${PYTHON:-$REPO_DIR/.venv/bin/python}"
STAGE1_EPOCHS="${STAGE1_EPOCHS:-8}"
STAGE2_EPOCHS="${STAGE2_EPOCHS:-5}"
ARGS=(-m pneumonia_cxr.cli train --stage1_epochs "$STAGE1_EPOCHS" --stage2_epochs "$STAGE2_EPOCHS")
if [ -n "${DATASET_PATH:-}" ]; then ARGS+=(--dataset_path "$DATASET_PATH"); fi
if [ "${1:-}" = "predict" ]; then
  shift
  ARGS=(-m pneumonia_cxr.cli predict)
  if [ -z "${SLURM_JOB_ID:-}" ]; then ARGS+=(--devices auto); fi
fi

if [ -n "${SLURM_JOB_ID:-}" ]; then
  GPUS="${SLURM_GPUS_ON_NODE:-${SLURM_NTASKS_PER_NODE:-1}}"
  NODES="${SLURM_JOB_NUM_NODES:-1}"
  # Lightning reads SLURM_* variables: one srun task per GPU, no extra launcher needed.
  srun "$PYTHON" "${ARGS[@]}" --accelerator gpu --devices "$GPUS" --num_nodes "$NODES" \
    --strategy ddp --num_workers "${SLURM_CPUS_PER_TASK:-4}" "$@"
else
  # Workstation: all visible GPUs (or the CPU), Lightning launches the DDP processes itself.
  "$PYTHON" "${ARGS[@]}" "$@"
fi
