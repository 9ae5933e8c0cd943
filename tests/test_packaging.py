"""pyproject.toml and environment.yml name the same packages; the CLI entry point exists."""

from __future__ import annotations

import re
from pathlib import Path

import tomllib
import yaml

ROOT = Path(__file__).resolve().parent.parent
NON_PYTHON = {"python", "pip", "nodejs"}


def _name(spec: str) -> str:
    return re.split(r"[\s<>=!~\[;]", spec.strip(), maxsplit=1)[0].lower().replace("_", "-")


def _pyproject():
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def test_extras_asked_for_exist():
    extras = _pyproject()["optional-dependencies"]
    for name in ("notebooks", "book", "fl", "privacy", "dev", "all"):
        assert name in extras
    assert any(_name(s) == "jupyter-book" and "<2" in s for s in extras["book"])
    deps = {_name(s) for s in _pyproject()["dependencies"]}
    for core in ("torch", "torchvision", "monai", "medmnist", "numpy", "matplotlib", "tqdm",
                 "safetensors", "scikit-image", "nibabel", "pydicom"):
        assert core in deps, core


def test_environment_yml_agrees_with_pyproject():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    project = _pyproject()
    known = {_name(s): s for s in project["dependencies"]}
    for extra in project["optional-dependencies"].values():
        known.update({_name(s): s for s in extra})
    conda, pip = [], []
    for dep in env["dependencies"]:
        (pip.extend(dep["pip"]) if isinstance(dep, dict) else conda.append(dep))
    for dep in conda:
        name = _name(dep)
        assert name in NON_PYTHON or name in known, f"environment.yml names {dep}, pyproject does not"
    installs_project = False
    for dep in pip:
        if dep.startswith("-e"):
            extras = re.findall(r"\[([^\]]+)\]", dep)
            assert extras and set(extras[0].split(",")) <= set(project["optional-dependencies"])
            installs_project = True
        else:
            name = _name(dep)
            assert name in known, f"environment.yml pip-installs {dep}, pyproject does not name it"
            assert known[name].replace(" ", "") == dep.replace(" ", ""), f"{dep} vs {known[name]}"
    assert installs_project, "environment.yml must install the project itself (-e .[all])"


def test_cli_entry_point():
    assert _pyproject()["scripts"]["medgan"] == "medgan_utils.cli:main"
