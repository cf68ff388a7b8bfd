"""Node-local state: locks, port reservations, cluster records, cgroups, addresses, signals, the Slurm environment."""
