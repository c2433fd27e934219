"""A dataset spec resolved (its source's keys and defaults live in the schema), and the input shape
each source yields, known without reading any data or importing torch (the DAG build checks models
against it).
"""
from __future__ import annotations

from pipeline_src.spec.schema import filled


class DataError(ValueError):
    """A data problem, described in one line."""


def resolve_spec(name: str, spec: dict) -> dict:
    """A dataset spec checked against its source's keys, with the schema's defaults filled (DataError)."""
    try:
        return {key: value for key, value in filled(spec, "dataset").items() if key != "paper_name"}
    except ValueError as err:
        raise DataError(f"datasets.{name}: {err}") from None


def input_shape(spec: dict) -> tuple[int, int, int]:
    """(channels, height, width) of the prepared images of a resolved dataset spec."""
    source = spec["source"]
    if source in ("digits", "fashion-mnist"):
        return (1, 8, 8) if source == "digits" else (1, 28, 28)
    if source in ("cifar10", "cifar100"):
        return 3, 32, 32
    return 3, spec["image_size"], spec["image_size"]
