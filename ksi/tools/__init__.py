"""Adapters for the external programs ksi runs (kind, nerdctl, liqoctl, squeue) and the one process chokepoint."""
