"""Readings: the names under which the audit judges a claim, and what each one is.

A training reading (params `readings`) is a training override where a paper's text leaves the recipe open;
`own_reading` names the params' own training block. The NoisyNN authors' protocols (params
`noisynn_protocols`) are readings of another kind: the NoisyNN paper leaves open whether the noise is on in
training and how strong it is, and the authors' code fixes both twice over (their ViT: optimal Q switched on
at test only; their CNN: a circular shift of 0.4 in training and at test). A NoisyNN cell is judged under
the protocol its treatment's method follows, else under the own reading, which for NoisyNN means "neither
protocol". A protocol fixes the noise and where it applies; the site and the test batches stay the
method's own (the site sweeps run a protocol at several sites).
"""
from __future__ import annotations

APPLY_TEXT = {"test": "at test only", "both": "in training and at test", "train": "in training only"}


def own_reading_text(params: dict) -> str:
    """What the params' own training block is, in a line: the reading runs of sets without readings follow."""
    opt = params["training"]["optimizer"]
    return (f"the params' own training block: {opt['name']} lr {opt['lr']:g}, weight decay {opt['weight_decay']:g}, "
            f"schedule {opt['schedule']}, {params['training']['epochs']} epochs (a set's own training block wins)")


def followed_protocol(method: dict, protocols: dict) -> str:
    """The NoisyNN protocol a method (its spec with defaults filled) follows: its noise (kind and every key
    the protocol's noise has, strength included) and apply_at are the protocol's. '' for none, and for
    every method that is not NoisyNN's."""
    if method.get("name") != "noisynn":
        return ""
    for name, protocol in protocols.items():
        noise = method.get("noise") or {}
        if method.get("apply_at") == protocol["apply_at"] and all(
                noise.get(key) == value for key, value in protocol["noise"].items()):
            return name
    return ""


def _noise_text(noise: dict) -> str:
    return " ".join([noise["kind"], *(f"{k} {v:g}" for k, v in noise.items() if k == "strength")])


def protocol_departure(method: dict, protocols: dict) -> str:
    """What a NoisyNN method that follows no protocol changes, against each protocol of its noise kind:
    'optimal_q in training and at test (authors_vit: at test only)'; a kind no protocol uses says so."""
    noise, where = method["noise"], APPLY_TEXT[method["apply_at"]]
    same_kind = {name: p for name, p in protocols.items() if p["noise"]["kind"] == noise["kind"]}
    if not same_kind:  # its strength is no protocol's either: a grid's points read alike
        return f"{noise['kind']} {where}, a kind neither protocol uses"
    theirs = [f"{name}: {_noise_text(p['noise'])} {APPLY_TEXT[p['apply_at']]}" for name, p in same_kind.items()]
    return f"{_noise_text(noise)} {where} ({'; '.join(theirs)})"


def reading_sources(params: dict, neither: dict[str, str] | None = None) -> dict[str, str]:
    """Every reading's name -> where it comes from: the own reading (for NoisyNN: neither of the authors'
    protocols, each such method label with what it changes, from `neither`: label -> text), the training
    readings and the NoisyNN protocols with their sources."""
    protocols = params.get("noisynn_protocols") or {}
    own = own_reading_text(params)
    if protocols:
        own += ("; a NoisyNN cell under it follows neither of the authors' protocols ("
                + ", ".join(f"`{name}`" for name in protocols) + ")")
        by_text: dict[str, list[str]] = {}  # methods that change the same thing, said once
        for label, text in (neither or {}).items():
            by_text.setdefault(text, []).append(label)
        if by_text:
            own += ": " + "; ".join(f"{', '.join(methods)}: {text}" for text, methods in by_text.items())
    return {params["own_reading"]: own, **{name: r["source"] for name, r in params["readings"].items()},
            **{name: (f"the NoisyNN authors' protocol: {_noise_text(p['noise'])} {APPLY_TEXT[p['apply_at']]} "
                      f"(site and test batches: the method's own). Source: {p['source']}")
               for name, p in protocols.items()}}
