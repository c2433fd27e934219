"""A run's method spec resolved and checked without torch. The schema (workflow/schemas/params.schema.yaml)
holds every key a method and a noise kind take and every default; here is only what a schema cannot
say: optimal Q needs a batch of two to mix in training, and a test batch left unset is the run's
eval_batch_size. `resolve_method` runs once per run, when the run table is expanded (config.expand_runs);
the resolved spec is what the train job gets, what the methods use as is, and what metrics.json and
MLflow record. Also here: which evaluations a NoisyNN run reports (`eval_plan`).
"""
from __future__ import annotations

from pipeline_src.spec.schema import filled

LINEAR_KINDS = ("circular_shift", "optimal_q")
TEST_BATCHES = ("shuffled", "class_sorted", "single")
VPN_SETTINGS = ("generator", "generator_hidden", "generator_width", "generator_small_stem", "mode", "objective",
                "lam", "k", "c")


def resolve_noise(spec: dict) -> dict:
    """A noise spec checked against its kind's keys, with the kind's defaults filled (ValueError)."""
    return filled(spec, "noise")


def resolve_augment(spec: dict) -> dict:
    """An augmentation spec checked against its kind's keys, with the kind's defaults filled (ValueError)."""
    resolved = filled(spec, "augment")
    low, high = resolved.get("sigma", (1, 1))
    if low > high:
        raise ValueError(f"sigma: {resolved['sigma']} is not [low, high] with low <= high")
    return resolved


def resolve_method(method: dict, batch_size: int, eval_batch_size: int) -> dict:
    """A run's method spec with every default filled, or a one-line ValueError. batch_size is the
    training batch (optimal Q cannot mix a batch of one); eval_batch_size fills an unset NoisyNN test
    batch. Idempotent: a resolved spec resolves to itself."""
    resolved = filled(method, "method")
    if "augment" in resolved:
        resolved["augment"] = resolve_augment(resolved["augment"])
    if resolved["name"] == "noisynn":
        in_training = resolved["apply_at"] in ("train", "both")
        if resolved["noise"]["kind"] == "optimal_q" and in_training and batch_size < 2:
            raise ValueError(f"batch_size={batch_size} is out of range for optimal_q in training: batch_size >= 2 "
                             "(with one sample optimal Q is the identity)")
        resolved.setdefault("test_batch_size", eval_batch_size)
    return resolved


def eval_plan(resolved: dict, eval_batch_size: int) -> dict[str, dict]:
    """eval_mode -> {noise, test_batches, test_batch_size}, in report order: the run's own setting
    first, then each protocol once, then each extra batch size under each batch-mixing protocol."""
    size = resolved["test_batch_size"] or eval_batch_size
    plan = {}

    def add(how: str, batch_size: int, suffix: str = "") -> None:
        if how == "none":
            plan.setdefault("no_noise", {"noise": False, "test_batches": "-", "test_batch_size": eval_batch_size})
        else:
            plan.setdefault(f"noise_{how}{suffix}", {"noise": True, "test_batches": how,
                                                     "test_batch_size": 1 if how == "single" else batch_size})

    add("none" if resolved["apply_at"] == "train" else resolved["test_batches"], size)
    for protocol in resolved["eval_protocols"]:
        add(protocol, size)
    for batch_size in resolved["eval_batch_sizes"]:
        for protocol in resolved["eval_protocols"]:
            if protocol in ("class_sorted", "shuffled"):
                add(protocol, batch_size, f"_b{batch_size}")
    return plan


def eval_modes(resolved: dict) -> list[str]:
    """Evaluation names in report order (see eval_plan)."""
    return list(eval_plan(resolved, 1))
