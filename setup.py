"""Packaging beyond what pyproject.toml can say: the configs keep their top-level home `conf/` in
the repository and ship inside the package as `specexp/conf` (specexp.experiment.config finds them there when
no checkout is around). Everything else is in pyproject.toml."""
from setuptools import find_packages, setup

setup(
    packages=find_packages(include=["specexp", "specexp.*"]) + ["specexp.conf"],
    package_dir={"specexp.conf": "conf"},
)
