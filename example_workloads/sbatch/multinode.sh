#!/usr/bin/env bash
# A batch job that gives a workload one Kubernetes cluster spanning three nodes.
#   sbatch example_workloads/sbatch/multinode.sh       (from a directory all nodes share: it becomes /app)
#SBATCH --job-name=ksi-multinode
#SBATCH --nodes=3
#SBATCH --ntasks-per-node=1
#SBATCH --time=01:00:00
# TERM to the steps two minutes before the time limit, so ksi tears the clusters down in time.
# Deliberately without "B:": with it only this shell is signalled, and srun would SIGKILL ksi at once.
#SBATCH --signal=TERM@120
set -euo pipefail
# -K1: if one node's ksi fails, the others are stopped (and tear down) instead of waiting forever.
srun -K1 ksi run "$SLURM_SUBMIT_DIR/example_workloads/multinode/multinode.sh" "$SLURM_SUBMIT_DIR"
