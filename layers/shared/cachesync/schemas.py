"""Optional per-topic JSON Schema validation (`<KIND>_SCHEMA`), off by default.

The projections need only a JSON object and its key field; an operator who
wants more checked before a record is cached gives a JSON Schema, and records
that fail it are dead-lettered with the reason. fastjsonschema is the engine
of Powertools' validation utility; it is used directly because that utility
compiles the schema again on every call (about a millisecond), where this
compiles it once per process.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache
from pathlib import Path
from typing import Any

import orjson


class SchemaError(ValueError):
    """The schema setting is not a readable, valid JSON Schema."""


class SchemaMismatch(ValueError):
    """A value that the topic's schema refuses."""


def load(setting: str) -> str:
    """The schema's JSON text, from inline JSON (starting with `{`) or a file path; checked."""
    text = setting if setting.lstrip().startswith("{") else _read(setting)
    try:
        schema = orjson.loads(text)
    except orjson.JSONDecodeError as error:
        raise SchemaError(f"is not valid JSON: {error}") from None
    if type(schema) is not dict:
        raise SchemaError("must be a JSON object")
    canonical = orjson.dumps(schema, option=orjson.OPT_SORT_KEYS).decode()
    validator(canonical)  # compile now: a broken schema fails the configuration, not each record
    return canonical


def validate(schema: str, document: Any) -> None:
    import fastjsonschema

    try:
        validator(schema)(document)
    except fastjsonschema.JsonSchemaValueException as error:
        raise SchemaMismatch(error.message) from None


@lru_cache(maxsize=16)
def validator(schema: str) -> Callable[[Any], Any]:
    import fastjsonschema  # imported only when a topic has a schema

    try:
        compiled: Callable[[Any], Any] = fastjsonschema.compile(orjson.loads(schema))
    except fastjsonschema.JsonSchemaDefinitionException as error:
        raise SchemaError(f"is not a valid JSON Schema: {error}") from None
    return compiled


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError as error:
        raise SchemaError(f"cannot be read from {path!r}: {error.strerror}") from None
