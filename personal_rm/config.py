"""Typed configs: pydantic models, loaded from YAML, overridden from the command line.

Precedence is defaults < presets < `--config file.yaml` < flags, and every layer is laid onto
the one below by one rule, `merge`: a mapping changes only the keys it names, at every depth,
down to the default of the field it lands on. `--scaling.n 16` changes N and keeps the job's
validated alpha; a section's default is never replaced by its class's bare defaults. The one
exception is a tagged union (a backend `kind`): naming another kind starts from that kind's
own defaults, since the fields of one kind mean nothing to another.

Every field (nested ones as `--section.field`) becomes a flag whose help is its description, so
`--help` documents the whole config; unknown keys are rejected (`extra="forbid"`), so a typo
fails loudly instead of running the default.
"""

from __future__ import annotations

import argparse
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

ConfigT = TypeVar("ConfigT", bound=BaseModel)
Layer = Path | str | Mapping[str, Any]  # a YAML file, or a nested mapping of values
TAG = "kind"  # the discriminator of tagged-union sections


def merge(base: Mapping[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    """`update` laid over `base` key by key, at every depth (see the module docstring)."""
    out = dict(base)
    for key, value in update.items():
        below = base.get(key)
        nested = isinstance(value, Mapping) and isinstance(below, Mapping)
        if nested and value.get(TAG, below.get(TAG)) == below.get(TAG):
            out[key] = merge(below, value)
        else:
            out[key] = value
    return out


def nest(dotted: Mapping[str, Any]) -> dict[str, Any]:
    """`{"split.seed": 3}` -> `{"split": {"seed": 3}}`."""
    out: dict[str, Any] = {}
    for key, value in dotted.items():
        *parents, leaf = key.split(".")
        node = out
        for parent in parents:
            node = node.setdefault(parent, {})
        node[leaf] = value
    return out


class Config(BaseModel):
    """Base of every config section: strict about unknown keys, and a partial section given
    for a field is laid onto that field's default, not onto its class's defaults."""

    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _onto_field_defaults(cls, data: Any) -> Any:
        if not isinstance(data, Mapping):
            return data
        out = dict(data)
        for name, field in cls.model_fields.items():
            default, given = field.default, data.get(name)
            if isinstance(default, BaseModel) and isinstance(given, Mapping):
                below = default.model_dump()
                if given.get(TAG, below.get(TAG)) == below.get(TAG):  # another kind: its own
                    out[name] = merge(below, given)
        return out


def override(config: ConfigT, values: Mapping[str, Any]) -> ConfigT:
    """`config` with dotted `values` (`{"mrm.inner_lr": 0.3}`) laid on it, validated again."""
    return type(config).model_validate(merge(config.model_dump(), nest(values)))


def _read_layer(layer: Layer) -> Mapping[str, Any]:
    if isinstance(layer, Mapping):
        return layer
    loaded = yaml.safe_load(Path(layer).read_text()) or {}
    if not isinstance(loaded, dict):
        raise ValueError(f"{layer}: expected a mapping of config keys at the top level")
    return loaded


def load_config(model: type[ConfigT], *layers: Layer) -> ConfigT:
    """The model's defaults with each layer (YAML file or nested mapping) laid on in turn."""
    data: dict[str, Any] = {}
    for layer in layers:
        data = merge(data, _read_layer(layer))
    return model.model_validate(data)


# -- the command line -----------------------------------------------------------------------------


def _sections(annotation: Any) -> list[type[BaseModel]]:
    """The config sections a field may hold: a model, an optional model (off unless one of its
    flags is given), or a tagged union of models (its flags are the union of theirs)."""
    annotation = _unannotated(annotation)
    union = typing.get_origin(annotation) in (typing.Union, types.UnionType)
    candidates = map(_unannotated, typing.get_args(annotation) if union else (annotation,))
    return [c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)]


def _unannotated(annotation: Any) -> Any:
    """`Annotated[T, ...]` -> T (union members carry their tags that way)."""
    while typing.get_origin(annotation) is typing.Annotated:
        annotation = typing.get_args(annotation)[0]
    return annotation


def _is_list(annotation: Any) -> bool:
    return typing.get_origin(annotation) in (list, tuple)


def _flat_fields(model: type[BaseModel], prefix: str = "") -> dict[str, tuple[Any, str]]:
    """Dotted flag name -> (annotation, help) for every leaf field, sections unrolled."""
    out: dict[str, tuple[Any, str]] = {}
    for name, field in model.model_fields.items():
        if sections := _sections(field.annotation):
            for section in sections:
                for key, (annotation, text) in _flat_fields(section, f"{prefix}{name}.").items():
                    if len(sections) > 1 and not key.endswith(f".{TAG}"):
                        kind = section.model_fields[TAG].default
                        text = f"[{kind}] {text}"
                    out.setdefault(key, (annotation, text))
            continue
        default = field.default
        if _is_list(field.annotation) and default is not None:
            default = ",".join(map(str, default))
        text = f"{field.description or ''} (default: {default})"
        out[f"{prefix}{name}"] = (field.annotation, text)
    return out


def parse_config(
    model: type[ConfigT],
    argv: Sequence[str] | None = None,
    description: str | None = None,
    preset: Callable[[ConfigT], Layer | None] | None = None,
) -> ConfigT:
    """Build a job's CLI from its config model and parse `argv` into a config.

    `preset(config)` may name a layer to put under the file and the flags (the pipeline's
    `--quick true` preset), decided from the config they give."""
    parser = argparse.ArgumentParser(
        description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", metavar="YAML", help="YAML file of config values")
    fields = _flat_fields(model)
    for key, (_, text) in fields.items():
        parser.add_argument(
            f"--{key}",
            dest=key,
            default=argparse.SUPPRESS,
            metavar=key.rsplit(".", 1)[-1].upper(),
            help=text.replace("%", "%%"),
        )
    args = vars(parser.parse_args(argv))
    path = args.pop("config", None)
    flags = nest(
        {
            key: [item.strip() for item in value.split(",") if item.strip()]
            if _is_list(fields[key][0])
            else value
            for key, value in args.items()
        }
    )
    layers: list[Layer] = [*([path] if path else []), flags]
    try:
        config = load_config(model, *layers)
        if preset is not None and (base := preset(config)) is not None:
            config = load_config(model, base, *layers)
        return config
    except (ValidationError, ValueError, FileNotFoundError) as exc:
        parser.error(str(exc))


def dump_config(config: BaseModel, path: str | Path) -> None:
    """Write the resolved config beside a run's results, so the run can be repeated."""
    Path(path).write_text(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))
