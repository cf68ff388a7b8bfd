#!/usr/bin/env bash
# The sweep as a batch job on three nodes; run it again (same SPEC, same results) to finish what a time
# limit or scancel cut short: finished tasks never run twice.
#   sbatch example_workloads/sweep/sweep.sh            (from a directory all nodes share: it becomes /app)
#SBATCH --job-name=ksi-sweep
#SBATCH --nodes=3
#SBATCH --ntasks-per-node=1
#SBATCH --time=01:00:00
# TERM to the steps two minutes before the time limit: running tasks are recorded as Interrupted and the
# clusters torn down. Deliberately without "B:" (see example_workloads/sbatch/multinode.sh).
#SBATCH --signal=TERM@120
set -euo pipefail
status=0
srun -K1 ksi run --tasks "$SLURM_SUBMIT_DIR/example_workloads/sweep/sweep.yaml" "$SLURM_SUBMIT_DIR" || status=$?
ksi tasks status "$SLURM_SUBMIT_DIR/ksi-results/lr-sweep" || true   # exits 1 while tasks are left
exit "$status"
