"""The pydantic models of the file, derived from the spec's dataclasses.

`fields_of(WorkerSpec, ...)` makes a model with one field per field of the
dataclass: same name, same default, same order, and the dataclass's
`supervisor.fields` metadata turned into pydantic's checks. A section model of
`supervisor.config` subclasses it and adds only what reading a file needs on top
(checks that run code, checks across keys, presentation), so a key is declared
once, in `supervisor.spec`, and validated here.

The file's view of a value differs from the spec's in four ways, all made here:
a duration is read from "500ms" and shown as "10s"; a signal is read from a name
or a number and shown by name; a sequence is a list (TOML's array), where the
spec keeps a tuple; a nested spec is read by its own model.
"""

from __future__ import annotations

import dataclasses
import signal
import types
import typing
from typing import Annotated, Any, ClassVar

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, PlainSerializer, create_model

from supervisor.fields import Duration, Limits
from supervisor.model import format_duration, parse_duration, parse_signal

# Shown to people as "10s" and "SIGTERM"; handed to the runtime as seconds and numbers.
DURATION = (
    BeforeValidator(parse_duration), PlainSerializer(format_duration, when_used="json")
)
Signal = Annotated[
    signal.Signals,
    BeforeValidator(parse_signal),
    PlainSerializer(lambda s: s.name, when_used="json"),
]


class FromSpec(BaseModel):
    """A model made by `fields_of`: it knows its spec class and can build one."""

    spec_class: ClassVar[type[Any]]

    def to_spec(self) -> Any:
        """This model's values as an instance of its spec class."""
        values = {name: _to_spec_value(getattr(self, name)) for name in type(self).model_fields}
        return self.spec_class(**values)


class Section(FromSpec):
    """A table of the file: unknown keys refused, values frozen once read."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def fields_of(
    spec: type[Any], *nested: type[FromSpec], base: type[BaseModel] = Section
) -> type[FromSpec]:
    """A model with the fields of the dataclass `spec`, for a model class to subclass.

    `nested` are the models that read the spec classes `spec`'s fields hold (a
    worker's `backoff` is read by the model whose spec_class is Backoff). `base` is
    the model to build on (Section, or pydantic-settings' BaseSettings for the file)."""
    models = {model.spec_class: model for model in nested}
    hints = typing.get_type_hints(spec, include_extras=True)
    definitions: dict[str, Any] = {}
    for spec_field in dataclasses.fields(spec):
        kind = _file_type(hints[spec_field.name], models)
        definitions[spec_field.name] = (kind, _file_default(spec_field, models))
    bases: tuple[type[BaseModel], ...] = (base,) if issubclass(base, FromSpec) else (base, FromSpec)
    model = typing.cast(type[FromSpec], create_model(
        f"{spec.__name__}Fields", __base__=bases, __module__=__name__, **definitions
    ))
    model.spec_class = spec
    return model


def _file_type(kind: Any, models: dict[type[Any], type[FromSpec]]) -> Any:
    """The type a field of the file has, for the type `kind` of the spec's field."""
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin is Annotated:
        metadata = [item for meta in kind.__metadata__ for item in _file_metadata(meta)]
        return Annotated[(_file_type(args[0], models), *metadata)]
    if origin in (typing.Union, types.UnionType):
        return typing.Union[tuple(_file_type(arg, models) for arg in args)]  # noqa: UP007
    if origin is tuple:  # tuple[X, ...]: the file writes an array
        return list[_file_type(args[0], models)]  # type: ignore[misc]
    if origin is dict:
        return dict[_file_type(args[0], models), _file_type(args[1], models)]  # type: ignore[misc]
    if kind is signal.Signals:
        return Signal
    if dataclasses.is_dataclass(kind):
        return models[typing.cast(type[Any], kind)]
    return kind


def _file_metadata(meta: object) -> tuple[object, ...]:
    if isinstance(meta, Duration):
        return DURATION
    if isinstance(meta, Limits):
        return (Field(ge=meta.ge, le=meta.le, min_length=meta.min_length),)
    return (meta,)


def _file_default(
    spec_field: dataclasses.Field[Any], models: dict[type[Any], type[FromSpec]]
) -> Any:
    """The spec's default; for a nested spec, its model's defaults (one frozen instance)."""
    factory: Any = spec_field.default_factory
    if factory is dataclasses.MISSING:
        return spec_field.default
    if factory in models:
        return models[factory]()
    return Field(default_factory=factory)


def _to_spec_value(value: Any) -> Any:
    if isinstance(value, FromSpec):
        return value.to_spec()
    if isinstance(value, list):
        return tuple(_to_spec_value(item) for item in value)
    if isinstance(value, dict):
        return {key: _to_spec_value(item) for key, item in value.items()}
    return value
