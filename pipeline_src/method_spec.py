"""Method specs checked and resolved without torch: the noise kinds, NoisyNN's method keys and
evaluation plan, VPN's settings. `resolve_method` runs once per run, when the run table is expanded
(config.expand_runs); the resolved spec, every default filled, is what the train job gets, what the
methods use as is, and what metrics.json and MLflow record.
"""
from __future__ import annotations

import math

# ----------------------------------------------------------------------------- noise kinds

KINDS = ("circular_shift", "optimal_q", "gaussian", "impulse")
LINEAR_KINDS = ("circular_shift", "optimal_q")

# Per kind: the keys it reads and their defaults. A key another kind reads is rejected,
# so that e.g. a strength given to optimal_q does not silently do nothing.
NOISE_KIND_DEFAULTS = {
    "circular_shift": {"strength": 0.3},  # the paper's default; the authors' CNN scripts use 0.4
    "optimal_q": {},
    "gaussian": {"strength": 1.0, "mean": 0.0, "sd": 1.0},
    "impulse": {"p": 0.1},
}


def resolve_noise(spec: dict) -> dict:
    """The spec with its kind's defaults filled in (validated first)."""
    check_noise(spec)
    return {"kind": spec["kind"], **NOISE_KIND_DEFAULTS[spec["kind"]], **{k: v for k, v in spec.items() if k != "kind"}}


def _number(spec: dict, key: str) -> float:
    value = spec[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"noise.{key}={value!r} is not a finite number")
    return float(value)


def check_noise(spec: dict, batch_size: int | None = None, training: bool = True) -> None:
    """Raise ValueError (one line: key, bad value, allowed range) if the spec cannot run.

    batch_size is the batch the noise will see; with training=True, optimal Q needs two
    samples to mix (with one it is the identity, which is only allowed at test time).
    """
    if not isinstance(spec, dict):
        raise ValueError(f"noise={spec!r} must be a mapping with at least 'kind'")
    kind = spec.get("kind")
    if kind not in KINDS:
        raise ValueError(f"noise.kind={kind!r} is not a noise kind; allowed: {', '.join(KINDS)}")
    allowed = NOISE_KIND_DEFAULTS[kind]
    for key in spec:
        if key != "kind" and key not in allowed:
            used = ", ".join(allowed) or "no parameters"
            raise ValueError(f"noise.{key} is not used by {kind}; {kind} takes {used}")
    full = {**allowed, **spec}
    if kind == "circular_shift":
        a = _number(full, "strength")
        if not 0 <= a < 0.5:
            raise ValueError(f"noise.strength={a:g} is out of range for circular_shift: 0 <= a < 0.5 "
                             "(I + Q must be invertible and diagonally dominant)")
    elif kind == "optimal_q":
        if training and batch_size is not None and batch_size < 2:
            raise ValueError(f"batch_size={batch_size} is out of range for optimal_q in training: batch_size >= 2 "
                             "(with one sample optimal Q is the identity)")
    elif kind == "gaussian":
        if _number(full, "strength") < 0:
            raise ValueError(f"noise.strength={full['strength']:g} is out of range for gaussian: strength >= 0")
        _number(full, "mean")
        if _number(full, "sd") < 0:
            raise ValueError(f"noise.sd={full['sd']:g} is out of range for gaussian: sd >= 0")
    elif kind == "impulse":
        p = _number(full, "p")
        if not 0 <= p <= 1:
            raise ValueError(f"noise.p={p:g} is out of range for impulse: 0 <= p <= 1")


# ----------------------------------------------------------------------------- NoisyNN

APPLY_AT = ("train", "test", "both")
TEST_BATCHES = ("shuffled", "class_sorted", "single")
EVAL_PROTOCOLS = ("none", *TEST_BATCHES)
# test_batch_size None: the run's eval_batch_size. eval_batch_sizes: extra test batch sizes, each
# evaluated under every batch-mixing protocol of eval_protocols (the batch-size study).
METHOD_DEFAULTS = {"site": "default", "apply_at": "both", "test_batches": "shuffled", "eval_protocols": [],
                   "test_batch_size": None, "eval_batch_sizes": []}
NOISE_DEFAULT = {"kind": "circular_shift"}  # its strength: NOISE_KIND_DEFAULTS
# keys of the schema's method entry that NoisyNN reads; the VPN ones are rejected
KNOWN_KEYS = ("label", "name", "augment", "grid", "noise", "site", "apply_at", "test_batches", "eval_protocols",
              "test_batch_size", "eval_batch_sizes")


def _one_of(key: str, value, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{key}={value!r} is not allowed; allowed: {', '.join(allowed)}")


def check_noisynn_spec(spec: dict, batch_size: int) -> dict:
    """Validate a NoisyNN method spec without a model; return it with defaults filled.

    batch_size is the training batch: it matters when noise applies in training (optimal Q
    cannot mix a batch of one). Site names are checked against a model by NoisyNNMethod.
    """
    unknown = [key for key in spec if key not in KNOWN_KEYS]
    if unknown:
        raise ValueError(f"method key {unknown[0]!r} is not used by noisynn; allowed: {', '.join(KNOWN_KEYS)}")
    resolved = {**METHOD_DEFAULTS, **spec}
    _one_of("apply_at", resolved["apply_at"], APPLY_AT)
    _one_of("test_batches", resolved["test_batches"], TEST_BATCHES)
    for protocol in resolved["eval_protocols"]:
        _one_of("eval_protocols item", protocol, EVAL_PROTOCOLS)
    site = resolved["site"]
    if not isinstance(site, str) or not site:
        raise ValueError(f"site {site!r} must be image, embedding, default, block:<i>, stage:<i> or a module path")
    kind, _, index = site.partition(":")
    if kind in ("block", "stage"):
        try:
            int(index)
        except ValueError:
            raise ValueError(f"site {site!r} is not {kind}:<integer>") from None
    noise = resolved.get("noise", NOISE_DEFAULT)
    in_training = resolved["apply_at"] in ("train", "both")
    check_noise(noise, batch_size if in_training else None, training=True)
    resolved["noise"] = resolve_noise(noise)
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


# ----------------------------------------------------------------------------- VPN

# Used when a spec leaves a key out. lam has no published value; 1.0 weighs both terms equally.
# generator_small_stem None: a 3x3 stride-1 stem on inputs of side <= 32 (ours), the authors' 7x7/2 stem above.
VPN_DEFAULTS = {"generator": "dnn3", "generator_hidden": 1024, "generator_width": 64, "generator_small_stem": None,
            "mode": "joint", "objective": "noisy_ce", "lam": 1.0, "k": 1, "c": 0.01}
GENERATORS = ("dnn3", "resnet18")
MODES = ("joint", "frozen")
OBJECTIVES = ("noisy_ce", "two_term")


def check_vpn_spec(spec: dict) -> dict:
    """The spec with defaults filled, or a one-line ValueError; needs no data (the DAG calls it before any job)."""
    settings = {key: spec[key] if spec.get(key) is not None else value for key, value in VPN_DEFAULTS.items()}
    for key, allowed in (("generator", GENERATORS), ("mode", MODES), ("objective", OBJECTIVES)):
        if settings[key] not in allowed:
            raise ValueError(f"VPN {key} {settings[key]!r} is unknown; allowed: {', '.join(allowed)}")
    k = settings["k"]
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"VPN k (noise samples per input) must be an integer >= 1, got {k!r}")
    for key in ("c", "lam"):
        value = settings[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            raise ValueError(f"VPN {key} must be a number >= 0, got {value!r}")
    if settings["generator_small_stem"] not in (None, True, False):
        raise ValueError(f"VPN generator_small_stem must be true, false or null, got {settings['generator_small_stem']!r}")
    for key in ("generator_hidden", "generator_width"):
        value = settings[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"VPN {key} must be an integer >= 1, got {value!r}")
    return settings


def resolve_method(method: dict, batch_size: int, eval_batch_size: int) -> dict:
    """A run's method spec with every default filled, or a one-line ValueError. batch_size is the
    training batch (optimal Q cannot mix a batch of one); a NoisyNN test batch left unset is the run's
    eval_batch_size. Idempotent: a resolved spec resolves to itself."""
    if method["name"] == "noisynn":
        resolved = check_noisynn_spec(method, batch_size)
        return {**resolved, "test_batch_size": resolved["test_batch_size"] or eval_batch_size}
    if method["name"] == "vpn":
        return {**method, **check_vpn_spec(method)}
    return dict(method)
