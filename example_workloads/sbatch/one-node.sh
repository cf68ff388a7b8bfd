#!/usr/bin/env bash
# A batch job that gives the training example a Kubernetes cluster on one node.
#   sbatch example_workloads/sbatch/one-node.sh        (from the directory to share: it becomes /app)
#SBATCH --job-name=ksi-one-node
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=1
#SBATCH --time=00:30:00
# TERM to the step two minutes before the time limit, so ksi tears the cluster down in time.
# Deliberately without "B:": with it only this shell is signalled, and srun would SIGKILL ksi at once.
#SBATCH --signal=TERM@120
set -euo pipefail
# The batch script runs from a copy in Slurm's spool: name the example from the submit directory.
srun ksi run "$SLURM_SUBMIT_DIR/example_workloads/training/training.sh" "$SLURM_SUBMIT_DIR"
