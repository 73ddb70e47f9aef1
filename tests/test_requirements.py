"""setup.cfg declares the Ray and Optuna versions the search is tested with; the installed ones must fit.

The search uses only public Ray Tune (Searcher, Callback, Tuner) and Optuna (ask/tell, storages)
APIs; the declared range says which releases this suite has run against. A new major release
fails here first, before a user meets it.
"""
import configparser
import importlib.metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement

SETUP_CFG = Path(__file__).resolve().parents[1] / "setup.cfg"


def declared():
    parser = configparser.ConfigParser()
    parser.read(SETUP_CFG)
    lines = [line.strip() for line in parser["options"]["install_requires"].splitlines() if line.strip()]
    return {req.name: req for req in map(Requirement, lines)}


@pytest.mark.parametrize("name", ["ray", "optuna"])
def test_installed_version_is_in_the_declared_range(name):
    requirement = declared()[name]
    assert requirement.specifier, f"setup.cfg gives {name} no version range"
    assert any(spec.operator == "<" for spec in requirement.specifier), f"{name} has no upper bound"
    installed = importlib.metadata.version(name)
    assert requirement.specifier.contains(installed), \
        f"{name} {installed} is installed but setup.cfg declares {requirement} (the tested range)"
