"""The places that pin the environment agree: pyproject.toml (direct needs), environment.yml (the conda env
clusters use), requirements.lock (everything, transitive too) and requirements-cpu.lock (the lock less what
only a GPU uses); the CUDA packages are Linux-only, as in torch's own metadata."""
import re
import tomllib
from pathlib import Path

import yaml
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]
# what a Linux CPU machine leaves out (make setup CPU=1): torch imports and trains without them
GPU_ONLY = {"triton", "cuda-bindings", "cuda-pathfinder", "cuda-toolkit"}
MAC = {"platform_system": "Darwin", "sys_platform": "darwin", "platform_machine": "arm64"}
LINUX = {"platform_system": "Linux", "sys_platform": "linux", "platform_machine": "x86_64"}


def _requirements(text: str) -> list[Requirement]:
    return [Requirement(line) for line in text.splitlines() if line.strip() and not line.startswith("#")]


def _pins(requirements) -> dict[str, str]:
    pins = {}
    for req in requirements:
        req = req if isinstance(req, Requirement) else Requirement(req)
        [spec] = req.specifier
        assert spec.operator == "==", f"{req}: not an exact pin"
        pins[req.name.lower()] = spec.version
    return pins


def test_pyproject_environment_and_lock_pin_the_same_versions():
    direct = _pins(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"])
    conda = yaml.safe_load((ROOT / "environment.yml").read_text())["dependencies"]
    pip_section = next(item["pip"] for item in conda if isinstance(item, dict))
    locked = _pins(_requirements((ROOT / "requirements.lock").read_text()))
    assert direct, "pyproject.toml pins nothing"
    assert _pins(pip_section) == direct
    assert {name: locked.get(name) for name in direct} == direct


def test_the_cpu_lock_is_the_lock_less_what_only_a_gpu_uses():
    locked = _pins(_requirements((ROOT / "requirements.lock").read_text()))
    cpu = _pins(_requirements((ROOT / "requirements-cpu.lock").read_text()))
    assert GPU_ONLY <= set(locked)
    assert cpu == {name: version for name, version in locked.items() if name not in GPU_ONLY}


def test_cuda_packages_are_installed_on_linux_only():
    """macOS and Windows get PyPI's CPU-only torch and none of the CUDA wheels; Linux gets them all (the
    torch 2.14.1 wheel loads the nvidia-* libraries at import, GPU or not)."""
    requirements = _requirements((ROOT / "requirements.lock").read_text())
    cuda = {r.name for r in requirements if re.match(r"(nvidia|cuda)-|triton$", r.name)}
    assert len(cuda) >= 17
    assert {r.name for r in requirements if r.marker and not r.marker.evaluate(MAC)} == cuda
    assert all(r.marker is None or r.marker.evaluate(LINUX) for r in requirements)
