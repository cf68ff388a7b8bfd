"""Bringing a run up and down: the single-node and multi-node runs, the rendezvous, the checks before creating."""
