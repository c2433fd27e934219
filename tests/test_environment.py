"""The three places that pin the environment agree: pyproject.toml (direct needs), environment.yml
(the conda env clusters use) and requirements.lock (everything, transitive too)."""
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def _pins(lines) -> dict[str, str]:
    pins = {}
    for line in lines:
        name, sep, version = line.strip().partition("==")
        if sep:
            pins[name.lower()] = version
    return pins


def test_pyproject_environment_and_lock_pin_the_same_versions():
    direct = _pins(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"])
    conda = yaml.safe_load((ROOT / "environment.yml").read_text())["dependencies"]
    pip_section = next(item["pip"] for item in conda if isinstance(item, dict))
    locked = _pins((ROOT / "requirements.lock").read_text().splitlines())
    assert direct, "pyproject.toml pins nothing"
    assert _pins(pip_section) == direct
    assert {name: locked.get(name) for name in direct} == direct
