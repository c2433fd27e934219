"""The params schema (workflow/schemas/params.schema.yaml): the single source of every allowed key and
every default. `filled` validates a whole params file, or one of the schema's definitions (a method,
a noise), and returns a copy with the defaults filled; the first error is one line naming the key.
"""
from __future__ import annotations

import copy
import functools
import math

import jsonschema
import yaml

from pipeline_src.provenance import REPO_ROOT

SCHEMA_PATH = REPO_ROOT / "workflow" / "schemas" / "params.schema.yaml"


class InputError(ValueError):
    """What the user gave (params, a dataset, its files) cannot be used, said in one line naming it. The base
    of the package's own errors (SchemaError, DataError, ParamsError): a ValueError, so callers that caught
    ValueError before still do; the CLI prints the line without a traceback."""


class SchemaError(InputError):
    """The first schema violation, in one line: where, what, what is allowed."""


# torch takes integers as C int64 (seeds up to 2**64 - 1, sizes less): beyond this a job dies with "Overflow
# when unpacking long long", naming no key
INT_RANGE = (-(2**63), 2**63 - 1)


def _finite_numbers(value, where: str) -> None:
    """NaN, infinity and integers torch cannot take, anywhere in a params value (the schema's minimum and
    maximum let NaN through: every comparison with it is false). Raises SchemaError naming the key."""
    if isinstance(value, dict):
        for key, item in value.items():
            _finite_numbers(item, f"{where}.{key}" if where else str(key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _finite_numbers(item, f"{where}.{index}" if where else str(index))
    elif isinstance(value, float) and not math.isfinite(value):
        raise SchemaError(f"{where or '(top level)'}: {value} is not a finite number")
    elif isinstance(value, int) and not isinstance(value, bool) and not INT_RANGE[0] <= value <= INT_RANGE[1]:
        raise SchemaError(f"{where or '(top level)'}: {value} is out of range: integers lie in [-2**63, 2**63 - 1], "
                          "what torch takes")


def _with_defaults(validator_class):
    validate_properties = validator_class.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for name, subschema in properties.items():
                if isinstance(subschema, dict) and "default" in subschema:
                    instance.setdefault(name, copy.deepcopy(subschema["default"]))
        yield from validate_properties(validator, properties, instance, schema)

    return jsonschema.validators.extend(validator_class, {"properties": set_defaults})


_Validator = _with_defaults(jsonschema.Draft7Validator)


def describe(error: jsonschema.ValidationError, root: str = "(top level)") -> str:
    where = ".".join(str(p) for p in error.absolute_path) or root
    if error.validator == "additionalProperties":
        allowed = sorted(error.schema.get("properties", {}))
        extra = sorted(set(error.instance) - set(allowed))
        hint = f"; allowed keys: {', '.join(allowed)}" if allowed else ""
        return f"{where}: unknown key {', '.join(map(repr, extra))}{hint}"
    if error.validator == "enum" and "propertyNames" in error.schema_path:
        return (f"{where}: key {error.instance!r} does not apply here; allowed keys: "
                f"{', '.join(map(str, error.validator_value))}")
    if error.validator == "pattern" and error.schema.get("x-allowed"):
        return f"{where}: {error.instance!r} is not allowed: {error.schema['x-allowed']}"
    if error.validator == "pattern" and error.schema.get("description"):
        return f"{where}: {error.instance!r} is not one of: {error.schema['description']}"
    if error.validator == "enum":
        return f"{where}: {error.instance!r} is not allowed; allowed values: {', '.join(map(str, error.validator_value))}"
    if error.validator in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum") and error.schema.get("description"):
        return f"{where}: {error.message} ({error.schema['description']})"
    return f"{where}: {error.message}"


@functools.cache
def _schema() -> dict:
    # libyaml's parser where PyYAML has it: every train and evaluate job reads the schema, which the pure
    # Python parser takes about 0.04 s of CPU for, and libyaml 0.005 s
    return yaml.load(SCHEMA_PATH.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))


def filled(instance: dict, definition: str | None = None) -> dict:
    """A validated copy of instance with the schema's defaults filled; definition names one of the
    schema's definitions (e.g. "method") to check that alone. Raises SchemaError."""
    schema = _schema()
    if definition is not None:
        schema = {"definitions": schema["definitions"], "$ref": f"#/definitions/{definition}"}
    instance = copy.deepcopy(instance)
    _finite_numbers(instance, "" if definition is None else definition)
    errors = sorted(_Validator(schema).iter_errors(instance), key=lambda e: list(map(str, e.absolute_path)))
    if errors:
        raise SchemaError(describe(errors[0], root=definition or "(top level)"))
    return instance


def evaluation_keys() -> tuple[str, ...]:
    """The method keys the schema marks as evaluation-only (x-evaluation-keys): they never reach training."""
    return tuple(_schema()["definitions"]["method"]["x-evaluation-keys"])
