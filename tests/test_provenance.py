"""Provenance: code hashes follow the code, hardware and determinism are recorded."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline_src.provenance import (HARDWARE_KEYS, PACKAGE_DIR, REPO_ROOT, apply_determinism, code_version,
                                     environment, git_state, hardware, nvidia_driver_version)


def test_code_version_covers_every_module_of_every_stage(tmp_path):
    package = tmp_path / "pkg"
    shutil.copytree(PACKAGE_DIR, package, ignore=shutil.ignore_patterns("__pycache__"))
    before = code_version(package)
    assert before == code_version(PACKAGE_DIR)
    for module in ("methods/noise.py", "results/aggregate.py", "__main__.py"):
        with open(package / module, "a") as handle:
            handle.write("\n# an edit\n")
        after = code_version(package)
        assert after != before, f"editing {module} must change the code version"
        before = after
    (package / "methods" / "__pycache__").mkdir()
    (package / "methods" / "__pycache__" / "noise.cpython-311.pyc").write_bytes(b"compiled")
    assert code_version(package) == before


def test_git_state_names_a_commit():
    state = git_state()
    assert len(state["git_commit"]) == 40 and state["git_dirty"] in (True, False)


def test_environment_names_the_hardware_of_the_device_and_none_on_cpu():
    assert not set(HARDWARE_KEYS) & set(environment())  # without a device: versions only
    on_cpu = environment("cpu")
    assert on_cpu["torch_version"] and {key: on_cpu[key] for key in HARDWARE_KEYS} == dict.fromkeys(HARDWARE_KEYS)


def test_environment_names_the_cpu_kernels_and_threads_a_run_used():
    import torch

    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        on_cpu = environment("cpu")
    finally:
        torch.set_num_threads(before)
    assert on_cpu["torch_threads"] == 1
    assert on_cpu["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    assert on_cpu["cpu_model"] and (on_cpu["cpu_model"] in cpuinfo or not cpuinfo)


def test_the_provenance_module_loads_without_torch():
    # the DAG build imports provenance (code_version); torch must come only with environment(device)
    code = "import sys, pipeline_src.provenance as p; p.code_version(); p.environment(); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO_ROOT, timeout=120)
    assert out.stdout.strip() == "False", out.stderr


@pytest.mark.parametrize("text, version", [
    ("NVRM version: NVIDIA UNIX x86_64 Kernel Module  550.54.15  Tue Mar  5 22:23:56 UTC 2024\n", "550.54.15"),
    ("NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  570.86.15  Release Build  (dvs-builder@U16-I3-B03-4-3)\n",
     "570.86.15"),
])
def test_the_driver_version_is_read_from_proc(tmp_path, text, version):
    (tmp_path / "version").write_text(text)
    assert nvidia_driver_version(tmp_path / "version") == version


def test_no_driver_gives_none(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no nvidia-smi either
    assert nvidia_driver_version(tmp_path / "absent") is None


@pytest.fixture
def torch_determinism_restored(monkeypatch):
    """apply_determinism changes process-wide switches: put them back for the other tests."""
    import torch

    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    before = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
              torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic)
    yield torch
    torch.use_deterministic_algorithms(before[0], warn_only=before[1])
    torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = before[2:]


def test_apply_determinism_sets_and_reports_the_switches(torch_determinism_restored, monkeypatch):
    torch = torch_determinism_restored
    torch.backends.cudnn.benchmark = True
    applied = apply_determinism()
    assert applied == {"deterministic_algorithms": True, "deterministic_warn_only": True, "cudnn_benchmark": False,
                       "cudnn_deterministic": True, "cublas_workspace_config": ":4096:8"}
    assert torch.are_deterministic_algorithms_enabled() and not torch.backends.cudnn.benchmark
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":16:8")  # the user's own setting is kept
    assert apply_determinism()["cublas_workspace_config"] == ":16:8"


@pytest.mark.cuda
def test_hardware_on_a_gpu_names_cuda_cudnn_driver_and_model():
    import torch

    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    found = hardware("cuda")
    assert found["cuda_version"] == torch.version.cuda and found["cudnn_version"] == torch.backends.cudnn.version()
    assert found["gpu_model"] == torch.cuda.get_device_name(0) and found["gpu_count"] >= 1
    assert found["gpu_driver_version"] and found["gpu_driver_version"][0].isdigit()
