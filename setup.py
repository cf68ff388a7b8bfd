"""Package layout that pyproject.toml cannot say alone: the top-level templates/ ships as ``ksi.templates``.

Everything else (metadata, dependencies, package data) is declared in pyproject.toml; the packages are
found by discovery, so a new subpackage can never be left out of the wheel.
"""

from setuptools import find_packages, setup

setup(
    packages=[*find_packages(include=["ksi", "ksi.*"]), "ksi.templates"],
    package_dir={"ksi.templates": "templates"},
)
