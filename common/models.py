"""The base of every section of an experiment file: strict pydantic models, and the error a validator raises to
point at one field (reported as ``file:line: field: message`` by ``orchestrator.yamlconfig``)."""

from __future__ import annotations

from typing import Any, Literal, get_args, get_origin

from pydantic import BaseModel, ConfigDict, model_validator


def _takes_yes_no(tp: Any) -> bool:
    """Whether a field of type ``tp`` has a use for true/false: bool, Any, a Literal of them, or a union, list or
    tuple of something that does."""
    if tp is bool or tp is Any:
        return True
    if get_origin(tp) is Literal:
        return any(isinstance(arg, bool) for arg in get_args(tp))
    return any(_takes_yes_no(arg) for arg in get_args(tp))


class StrictModel(BaseModel):
    """A section of an experiment file. Unknown keys, NaN and infinity are errors, and so is yes/no/true/false where a
    number or a name is expected (pydantic on its own would read ``seed: yes`` as 1)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _no_yes_no_for_a_number(cls, data: Any) -> Any:
        for name, value in data.items() if isinstance(data, dict) else ():
            items = value if isinstance(value, (list, tuple)) else [value]
            field = cls.model_fields.get(name)
            if (field is not None and any(isinstance(item, bool) for item in items)
                    and not _takes_yes_no(field.annotation)):
                raise FieldError(name, "expected a number or a name, not yes/no/true/false")
        return data


class FieldError(ValueError):
    """A validator's complaint about one field: ``field`` is a dotted path relative to the model being validated
    (``"exposure_s"``, ``"network.width"``); the experiment loader reports it at that field's line."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field
