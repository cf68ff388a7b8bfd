"""ksi's benchmarks: speed and memory targets, measured against the installed ksi and the simulated tools."""

import importlib.util


def require_installed_ksi() -> None:
    """Exit with a clear line unless ``ksi`` is importable as installed (its templates ship only in the wheel)."""
    if importlib.util.find_spec("ksi") is None or importlib.util.find_spec("ksi.templates") is None:
        raise SystemExit("benchmarks: ksi is not installed in this Python; run pip install '.[test]' first")
