"""Structured output: the schema a reply must follow, and its validation.

``cw.call(schema=Person)`` (a pydantic model class) or ``cw.call(schema={...})`` (a JSON
schema dict) asks each provider for its native structured output (see
:data:`rxcontext.options.PROVIDER_PARAMETERS`); the final text is validated here:

* a pydantic model: ``Model.model_validate_json(text)`` gives the model instance;
* a dict: ``json.loads`` then ``jsonschema`` (the optional extra ``rxcontext[schema]``)
  gives the plain JSON value. Without ``jsonschema`` installed a dict schema is refused
  before the request (:class:`~rxcontext.errors.SchemaError`), rather than returning
  unvalidated data as if it were checked.

The value lands on ``Reply.parsed``; the stored MODEL_RESP's metadata keeps ``schema`` (name
and JSON schema) and ``parsed`` (its JSON form), or ``parse_error`` when validation failed.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from ._optional_nulls import drop_optional_nulls
from ._schema_cycles import ref_cycle
from .errors import SchemaError

__all__ = ["OutputSchema", "SchemaFailure"]

_NAME = re.compile(r"[^A-Za-z0-9_-]+")


class SchemaFailure(Exception):
    """Internal: the text did not validate; ``str()`` says why."""


def _jsonschema() -> Any:
    try:
        import jsonschema  # type: ignore[import-untyped]
    except ImportError:
        return None
    return jsonschema


@dataclass(frozen=True, slots=True)
class OutputSchema:
    """What a reply must be: ``name`` (a provider-safe label), ``json_schema`` (the JSON
    schema sent) and ``model`` (the pydantic class, or None for a dict schema)."""

    name: str
    json_schema: dict[str, Any] = field(hash=False)
    model: type[Any] | None = None

    @classmethod
    def of(cls, schema: Any) -> OutputSchema:
        """From a pydantic model class, a JSON-schema dict, or an ``OutputSchema``."""
        if isinstance(schema, OutputSchema):
            return schema
        if isinstance(schema, type) and hasattr(schema, "model_json_schema"):
            return cls(_safe_name(schema.__name__), schema.model_json_schema(), schema)
        if isinstance(schema, dict):
            if _jsonschema() is None:
                raise SchemaError(
                    "a dict schema is validated with the jsonschema package: "
                    "pip install 'rxcontext[schema]' (or pass a pydantic model class)"
                )
            try:
                json.dumps(schema)
                _jsonschema().validators.validator_for(schema).check_schema(schema)
            except (TypeError, ValueError) as exc:
                raise SchemaError(f"not a JSON schema: {exc}") from exc
            except Exception as exc:  # jsonschema.SchemaError
                raise SchemaError(f"not a valid JSON schema: {_first_line(exc)}") from exc
            cycle = ref_cycle(schema)
            if cycle is not None:
                raise SchemaError(
                    "not a usable JSON schema: a $ref cycle comes back to the same schema "
                    f"without going into a property or item ({' -> '.join(cycle)}), so it "
                    "has no defined meaning and validating it would never end; point the "
                    "$ref at the alternatives themselves"
                )
            title = schema.get("title")
            return cls(_safe_name(title if isinstance(title, str) else "response"), schema)
        raise SchemaError(
            f"schema must be a pydantic model class or a JSON-schema dict, "
            f"not {type(schema).__name__}"
        )

    def validate(self, text: str, *, optional_nulls: bool = False) -> Any:
        """The validated value of ``text``; raises :class:`SchemaFailure` saying why not.

        ``optional_nulls``: the model was sent the schema with its optional properties made
        required and nullable (OpenAI's strict mode), so a null where this schema lets the key
        be left out (and the property does not allow null itself) is read as the key left out.
        """
        if self.model is not None:
            if optional_nulls:
                text = self._without_optional_nulls(text)
            try:
                return self.model.model_validate_json(text)
            except ValueError as exc:  # pydantic.ValidationError is a ValueError
                raise SchemaFailure(str(exc)) from exc
        try:
            value = json.loads(text)
        except ValueError as exc:
            raise SchemaFailure(f"invalid JSON: {exc}") from exc
        if optional_nulls:
            value = drop_optional_nulls(value, self.json_schema)
        validator = _jsonschema().validators.validator_for(self.json_schema)(self.json_schema)
        errors = sorted(validator.iter_errors(value), key=lambda e: list(e.absolute_path))
        if errors:
            raise SchemaFailure(
                "; ".join(
                    f"{'/'.join(map(str, e.absolute_path)) or '(root)'}: {e.message}"
                    for e in errors[:5]
                )
            )
        return value

    def _without_optional_nulls(self, text: str) -> str:
        """``text`` less its optional nulls, still JSON for pydantic's JSON-mode validation
        (``text`` as it is when it is not JSON or has none: pydantic says what is wrong)."""
        try:
            value = json.loads(text)
        except ValueError:
            return text
        kept = drop_optional_nulls(value, self.json_schema)
        return text if kept == value else json.dumps(kept)

    def dump(self, value: Any) -> Any:
        """``value`` as JSON data (a pydantic model through ``model_dump(mode="json")``)."""
        if self.model is not None and hasattr(value, "model_dump"):
            return value.model_dump(mode="json")
        return value

    def to_dict(self) -> dict[str, Any]:
        """What the stored MODEL_RESP's metadata keeps under ``schema``."""
        return {"name": self.name, "json_schema": self.json_schema}


def _safe_name(name: str) -> str:
    return (_NAME.sub("_", name).strip("_") or "response")[:64]


def _first_line(exc: BaseException) -> str:
    return (str(exc).splitlines() or [type(exc).__name__])[0]
