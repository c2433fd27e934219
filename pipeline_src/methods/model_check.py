"""Every distinct model of a params file built once on the meta device (shapes only, no weights),
run forward at its dataset's input shape, and every NoisyNN run's site resolved on it: what can only
be checked against a built model, checked before any job starts. The DAG build runs this in a
subprocess (preflight.py), so Snakemake itself never imports torch.

A request is {"model": name, "cfg": models entry, "dataset": name, "in_shape": [C, H, W],
"sites": [[experiment_set, run_id, site], ...]}; the answer is a list of one-line errors.
"""
from __future__ import annotations

from pathlib import Path
from urllib.parse import urlparse

import torch

from pipeline_src.methods.models import build_from_cfg
from pipeline_src.methods.sites import resolve_site

PROBE_CLASSES = 10  # the head's width changes no site and no input shape a model accepts
PROBE_BATCH = 2  # batch-mixing noise sites see a batch, so probe with more than one sample


def _reason(err: Exception) -> str:
    return " ".join(str(err).split())[:240]


# the files timm looks for in a Hugging Face Hub repository when its config names none (timm/models/_hub.py)
HUB_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "open_clip_model.safetensors",
                    "open_clip_pytorch_model.bin")


def missing_weights(name: str, cfg: dict) -> str | None:
    """A models entry with timm_kwargs pretrained and no weights_file takes timm's weights, which must be on
    this machine before any job starts: a job would otherwise download them, or offline retry the Hub for a
    minute and fail, after the DAG has started (params/paper.yaml: the pipeline does not download weights)."""
    if not (cfg.get("timm_kwargs") or {}).get("pretrained") or cfg.get("weights_file"):
        return None
    from timm.models._builder import _resolve_pretrained_source, resolve_pretrained_cfg

    arch, where = cfg["arch"], f"models.{name}.timm_kwargs.pretrained"
    pretrained = resolve_pretrained_cfg(arch)
    if pretrained is None:
        return f"{where}: timm has no pretrained weights for {arch}; remove pretrained, or give models.{name}.weights_file"
    source, location = _resolve_pretrained_source(pretrained.to_dict())
    if source == "hf-hub":
        from huggingface_hub import try_to_load_from_cache

        repo, files = (location[0], [location[1]]) if isinstance(location, tuple) else (location, HUB_WEIGHT_FILES)
        repo_id, _, revision = repo.partition("@")
        if any(isinstance(try_to_load_from_cache(repo_id, f, revision=revision or None), str) for f in files):
            return None
        wanted = f"Hugging Face Hub {repo_id}"
    elif source == "url":
        if (Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(location).path).name).is_file():
            return None
        wanted = location
    elif source in ("file", "local-dir"):
        if Path(location).exists():
            return None
        wanted = location
    else:
        return None
    return (f"{where}: the weights of {arch} ({wanted}) are not on this machine, and jobs do not download them: "
            f"fetch them into the cache once (python -c \"import timm; timm.create_model('{arch}', pretrained=True)\") "
            f"or save a state_dict and name it in models.{name}.weights_file")


def check_request(request: dict) -> list[str]:
    name, cfg, in_shape = request["model"], request["cfg"], tuple(request["in_shape"])
    where = f"models.{name} ({cfg['arch']})"
    if missing := missing_weights(name, cfg):
        return [missing]
    try:
        with torch.device("meta"):
            model = build_from_cfg(cfg, in_shape, PROBE_CLASSES, load_weights=False)
    except (ValueError, RuntimeError, TypeError) as err:
        return [f"{where} cannot be built: {_reason(err)}"]
    try:
        with torch.no_grad():
            model.eval()(torch.empty(PROBE_BATCH, *in_shape, device="meta"))
    except NotImplementedError:
        pass  # an op without a meta kernel: the shape check is left to the job
    except (RuntimeError, ValueError, AssertionError) as err:
        return [f"{where} does not accept the inputs of dataset {request['dataset']}, of shape {list(in_shape)}: "
                f"{_reason(err)}; the input is too small for this model: use a larger image_size or another "
                "model (small_stem keeps a ResNet's resolution)"]
    errors = []
    resolved: dict[tuple, tuple[str, str]] = {}  # (set, cell, module) -> the first (run id, site) there
    for experiment_set, run_id, site, cell in request["sites"]:
        try:
            path, _ = resolve_site(model, site)
        except ValueError as err:
            errors.append(f"experiment_sets.{experiment_set} run {run_id}: {err}")
            continue
        first_id, first_site = resolved.setdefault((experiment_set, cell, path), (run_id, site))
        if first_site != site:  # stage:3 and stage:-1 of a 4-stage ResNet: one training under two run ids
            errors.append(f"experiment_sets.{experiment_set} runs {first_id} and {run_id}: sites {first_site!r} and "
                          f"{site!r} are both {path or 'the input'} of {type(model).__name__}, one experiment "
                          "under two run ids: keep one of the sites")
    return errors


def check_models(requests: list[dict]) -> list[str]:
    return [error for request in requests for error in check_request(request)]
