"""Where a number came from: git state, code version, library versions and hardware, and the determinism
switches a run sets and records."""
from __future__ import annotations

import contextlib
import hashlib
import os
import platform
import re
import subprocess
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
REPO_ROOT = PACKAGE_DIR.parent


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(REPO_ROOT), *args], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def git_state() -> dict:
    commit = _git("rev-parse", "HEAD")
    dirty = _git("status", "--porcelain", "--untracked-files=no")
    return {"git_commit": commit or "unknown", "git_dirty": bool(dirty) if dirty is not None else None}


def code_version(package_dir: Path = PACKAGE_DIR) -> str:
    """Hash of the whole package's source, sub-packages included: the code version a run records
    (a rule's own code hash, which decides reruns, is plumbing/code_hash.py's)."""
    digest = hashlib.sha256()
    for path in sorted(package_dir.rglob("*.py")):
        digest.update(path.relative_to(package_dir).as_posix().encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def environment(device=None) -> dict:
    """Library versions from package metadata (importing timm just to ask costs seconds), and the
    hardware of `device` (the torch device a run uses; None: no hardware fields are asked for).

    Torch is imported only for the hardware, i.e. in the training process, which has it loaded: the DAG
    build imports this module and stays torch-free.
    """
    from importlib.metadata import PackageNotFoundError, version

    versions = {"python_version": platform.python_version()}
    for package in ("torch", "torchvision", "timm", "numpy"):
        try:
            versions[f"{package}_version"] = version(package)
        except PackageNotFoundError:
            versions[f"{package}_version"] = None
    return versions if device is None else {**versions, **hardware(device)}


HARDWARE_KEYS = ("cuda_version", "cudnn_version", "gpu_driver_version", "gpu_model", "gpu_count")


def cpu_model() -> str:
    """The CPU's model name (Linux /proc/cpuinfo), else what platform knows."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def hardware(device) -> dict:
    """The CPU (its model, the vector instruction set torch's kernels use, and torch's thread count),
    and for a CUDA device the CUDA, cuDNN and driver versions, the GPU model and how many GPUs the
    process sees (None on any other device). A rerun's numbers can depend on all of them: the same code
    and seed gave other DNN3 losses from epoch 1 on an Intel and an AMD CPU (README, reproducing the report)."""
    import torch

    cpu = {"cpu_model": cpu_model(), "cpu_capability": torch.backends.cpu.get_cpu_capability(),
           "torch_threads": torch.get_num_threads()}
    device = torch.device(device)
    if device.type != "cuda":
        return {**cpu, **dict.fromkeys(HARDWARE_KEYS)}
    index = device.index if device.index is not None else torch.cuda.current_device()
    return {**cpu, "cuda_version": torch.version.cuda, "cudnn_version": torch.backends.cudnn.version(),
            "gpu_driver_version": nvidia_driver_version(), "gpu_model": torch.cuda.get_device_name(index),
            "gpu_count": torch.cuda.device_count()}


def nvidia_driver_version(proc_file: Path = Path("/proc/driver/nvidia/version")) -> str | None:
    """The NVIDIA kernel driver's version: torch does not report it. From /proc (Linux), else nvidia-smi."""
    try:
        found = re.search(r"Kernel Module\s+(?:for \S+\s+)?([0-9][\w.]*)", Path(proc_file).read_text())
        if found:
            return found.group(1)
    except OSError:
        pass
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    first = out.stdout.strip().splitlines()[:1] if out.returncode == 0 else []
    return first[0].strip() if first else None


# cuBLAS's deterministic mode needs a fixed workspace (CUDA >= 10.2); PyTorch's docs give ":4096:8".
CUBLAS_WORKSPACE = ":4096:8"


def apply_determinism() -> dict:
    """Switch on the determinism PyTorch offers, before the first CUDA operation; return what is set.

    torch.use_deterministic_algorithms(True, warn_only=True): deterministic kernels where PyTorch has
    them, a warning (not an error) for an op that has none, so a run never stops over it. cuDNN: no
    benchmark-time choice of algorithm (it can pick differently from run to run) and its deterministic
    algorithms. CUBLAS_WORKSPACE_CONFIG is read when cuBLAS starts, so it must be set before; a value
    the user set is kept. On a CPU these change nothing we use (our CPU kernels are deterministic at a
    fixed thread count); they are set anyway, so every run records the same switches.
    """
    import torch

    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE)
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True
    return {"deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
            "deterministic_warn_only": torch.is_deterministic_algorithms_warn_only_enabled(),
            "cudnn_benchmark": torch.backends.cudnn.benchmark,
            "cudnn_deterministic": torch.backends.cudnn.deterministic,
            "cublas_workspace_config": os.environ["CUBLAS_WORKSPACE_CONFIG"]}
