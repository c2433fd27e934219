"""Protocols: the overlays a params `protocol` lays over the run table's runs.

protocol: authors_code follows the authors' public code where it departs from their paper's text
(params/deviations.yaml names each departure and its source): per family of runs, training overrides,
method keys filled where a run's spec leaves them out, model keys likewise. config.expand_runs applies
them (authors_code) and refuses runs the overlay makes one training under two run ids.
"""
from __future__ import annotations

import copy
import functools
import json

from pipeline_src.spec.schema import SchemaError, filled


IMAGENET_STATS = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
VPN_CODE_TRAINING = {"epochs": 200, "optimizer": {"name": "sgd", "lr": 0.1, "momentum": 0.9,
                                                  "weight_decay": 5e-4, "schedule": "cosine"}}
AUTHORS_CODE = {
    # hyzhang98/VPN train.py defaults; network/ResNet.py: 3x3 stride-1 stem for every base ResNet
    # trained from scratch (their ImageNet runs start from torchvision's 7x7-stem weights instead)
    "vpn": {"training": VPN_CODE_TRAINING, "method": {"generator_small_stem": False}, "model": {"small_stem": True}},
    "vpn_imagenet": {"training": VPN_CODE_TRAINING, "method": {"generator_small_stem": False}, "model": {}},
    # Shawey94/NoisyNN NoisyViT-OptimalQ (pretrained ViTs only): runScript.txt, parameters.py, Main.py,
    # Accdataloader.py
    "noisynn_vit": {"training": {"epochs": 50, "batch_size": 16, "label_smoothing": 0.1,
                                 "optimizer": {"name": "adamw", "lr": 1e-6, "weight_decay": 1e-4, "schedule": "cosine",
                                               "warmup_epochs": 10, "min_lr": 1e-7}},
                    "method": {"test_batches": "class_sorted", "test_batch_size": 10},
                    "model": {"input_norm": IMAGENET_STATS}},
    # NoisyCNN_CircularShiftQ: script.txt, Main.py (AdamW default weight decay 0.01), dataloader.py. Their
    # ImageNet normalisation goes with torchvision's pretrained weights, which cannot be loaded here.
    "noisynn_cnn": {"training": {"epochs": 100, "batch_size": 512,
                                 "optimizer": {"name": "adamw", "lr": 1e-3, "weight_decay": 0.01, "schedule": "cosine"}},
                    "method": {"test_batches": "class_sorted", "test_batch_size": 512, "noise.strength": 0.4},
                    "model": {}},
}
NOISYNN_KINDS = ("noisynn_main", "harmful_noise", "layer_sweep", "strength_sweep", "eval_protocol")


def authors_code_family(set_kind: str, model_cfg: dict, dataset_cfg: dict) -> str | None:
    """Which of the authors' recipes a run follows under protocol authors_code; None: no public
    recipe exists for it (the `baseline` set, ViTs trained from scratch), so the params' own stays."""
    if set_kind.startswith("vpn"):
        return "vpn_imagenet" if dataset_cfg["source"] == "imagefolder" else "vpn"
    if set_kind not in NOISYNN_KINDS:
        return None
    if "vit" in model_cfg["arch"]:
        return "noisynn_vit" if (model_cfg.get("timm_kwargs") or {}).get("pretrained") else None
    return "noisynn_cnn"


def _fill_method(method: dict, defaults: dict) -> dict:
    """Method keys the spec leaves out, from a protocol's defaults (dotted keys reach into noise), each
    where the schema allows it for this method (test_batches for NoisyNN, noise.strength for a circular
    shift, ...): which key applies to which method is said once, in the schema."""
    for dotted, value in defaults.items():
        method = _with_default(json.dumps(method, sort_keys=True), dotted, json.dumps(value))
    return json.loads(json.dumps(method))  # a copy the caller may change


@functools.cache  # the same method spec recurs across datasets, models and seeds
def _with_default(method_json: str, dotted: str, value_json: str) -> dict:
    method = json.loads(method_json)
    *parents, last = dotted.split(".")
    target = method
    for key in parents:
        target = target.setdefault(key, {})
    if last in target:
        return json.loads(method_json)
    target[last] = json.loads(value_json)
    try:
        filled(method, "method")
    except SchemaError:  # the key does not apply to this method
        return json.loads(method_json)
    return method


def merge(base: dict, override: dict) -> dict:
    """base with override's keys laid over it, nested mappings key by key (a new dict)."""
    out = copy.deepcopy(base)
    for key, value in (override or {}).items():
        out[key] = merge(out.get(key, {}), value) if isinstance(value, dict) else copy.deepcopy(value)
    return out


def authors_code(set_kind: str, training: dict, method: dict, model_cfg: dict,
                 dataset_cfg: dict) -> tuple[dict, dict, dict]:
    """A run's training, method and model under protocol authors_code: its family's recipe over them, or
    them unchanged where no public recipe exists (authors_code_family)."""
    name = authors_code_family(set_kind, model_cfg, dataset_cfg)
    if name is None:
        return training, method, model_cfg
    family = AUTHORS_CODE[name]
    return (merge(training, family["training"]), _fill_method(method, family["method"]),
            {**family["model"], **model_cfg})
