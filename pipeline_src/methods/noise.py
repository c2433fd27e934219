"""NoisyNN noise kinds (docs/methods.md section 1.1), as plain functions on a batch.

Every kind works on the first axis as the batch. Token tensors (B, N, D) may carry
prefix tokens (the class token) that are never touched. Random draws use the torch
global RNG, which the training loop seeds and checkpoints.

A noise spec is the params dict {kind, strength, mean, sd, p}; method_spec.resolve_noise checks it
and fills the defaults, so the resolved spec written next to a run says which values it used.
"""
from __future__ import annotations

import torch

from pipeline_src.spec.method_spec import LINEAR_KINDS, resolve_noise


def mixing_matrix(spec: dict, batch_size: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """The B x B matrix I + Q that a linear kind applies: X' = (I + Q) X over the batch axis."""
    spec = resolve_noise(spec)
    eye = torch.eye(batch_size, dtype=dtype)
    if spec["kind"] == "circular_shift":
        a = spec["strength"]
        shift = eye.roll(1, dims=1)  # row i has its one at column i+1: sample i receives sample i+1
        return (1 - a) * eye + a * shift
    if spec["kind"] == "optimal_q":
        return (eye + torch.ones(batch_size, batch_size, dtype=dtype)) / (batch_size + 1)
    raise ValueError(f"noise.kind={spec['kind']!r} has no mixing matrix; linear kinds: {', '.join(LINEAR_KINDS)}")


def apply_noise(x: torch.Tensor, spec: dict, prefix_tokens: int = 0) -> torch.Tensor:
    """Noise x along its batch axis; with prefix_tokens > 0, x is (B, N, D) and tokens [:prefix] stay.

    spec is resolved (method_spec.resolve_noise, once per run): this runs on every forward batch.
    """
    if prefix_tokens:
        if x.ndim != 3:
            raise ValueError(f"prefix_tokens={prefix_tokens} needs a (B, N, D) token tensor, got shape {tuple(x.shape)}")
        # cat, not in-place assignment, so autograd sees the untouched prefix as identity
        return torch.cat([x[:, :prefix_tokens], apply_noise(x[:, prefix_tokens:], spec)], dim=1)
    kind = spec["kind"]
    if kind == "circular_shift":
        a = spec["strength"]
        # roll by -1: row i gets row i+1. The authors' form: the whole noise term a(SX - X) is
        # detached, so the forward is (1 - a) X + a SX but the gradient to X is the identity
        # (a sample's gradient neither leaks into its neighbour nor shrinks by 1 - a).
        return x + a * (torch.roll(x, shifts=-1, dims=0) - x).detach()
    if kind == "optimal_q":
        # (I + J)/(B+1) X = (X_i + sum_j X_j)/(B+1): one batch sum, O(B) instead of the
        # authors' O(B^2) concatenation of shifted copies.
        return (x + x.sum(dim=0, keepdim=True)) / (x.shape[0] + 1)
    if kind == "gaussian":
        return x + spec["strength"] * (torch.randn_like(x) * spec["sd"] + spec["mean"])
    if kind == "impulse":
        p = spec["p"]
        u = torch.rand_like(x)
        high, low = x.detach().max(), x.detach().min()
        return torch.where(u < p / 2, high, torch.where(u < p, low, x))
    raise ValueError(f"noise.kind={kind!r} is not a noise kind; resolve the spec with method_spec.resolve_noise")
