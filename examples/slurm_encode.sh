#!/usr/bin/env bash
# Relabel with slc encode on a SLURM allocation: one torchrun per node, 8 GPUs each.
# Submit:  sbatch examples/slurm_encode.sh teacher.pt /data/imagenet/train /shared/labels.slc
# OUT must be on a filesystem every node sees: ranks write their parts to OUT.parts/ and rank 0
# joins them. Rerun the same script with RESUME=1 after a failure or preemption.
#SBATCH --job-name=slc-encode
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=32
#SBATCH --time=24:00:00
set -euo pipefail
TEACHER=${1:?teacher} IMAGES=${2:?images} OUT=${3:?output .slc}
HEAD=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
srun torchrun \
  --nnodes "$SLURM_NNODES" --nproc-per-node 8 \
  --rdzv-id "$SLURM_JOB_ID" --rdzv-backend c10d --rdzv-endpoint "$HEAD:29500" \
  -m slc encode "$TEACHER" "$IMAGES" -o "$OUT" \
  --epochs 300 -T 4 --ratio 40 --workers 4 --batch-size 256 ${RESUME:+--resume}

# Without a shared rendezvous (a job array, separate machines), write parts and merge them:
#   slc encode "$TEACHER" "$IMAGES" -o codec.slc --fit-only -T 4 --ratio 40
#   slc encode "$TEACHER" "$IMAGES" -o part$SLURM_ARRAY_TASK_ID.slc --part $SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT \
#       --codec-from codec.slc -T 4 --ratio 40
#   slc merge part*.slc -o "$OUT"
