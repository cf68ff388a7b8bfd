"""Speed and memory benchmarks of ksi run (targets live here, not in the tests)."""
