"""Typed job configs: pydantic models, loaded from YAML, overridden from the command line.

Precedence is defaults < `--config file.yaml` < flags. Every field of the model (nested ones
as `--section.field`) becomes a flag whose help is the field's description, so `--help`
documents the whole config, and unknown keys in YAML are rejected (`extra="forbid"`), so a
typo fails loudly instead of silently running the default.
"""

from __future__ import annotations

import argparse
import types
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

ConfigT = TypeVar("ConfigT", bound=BaseModel)


def _model_of(annotation: Any) -> type[BaseModel] | None:
    """The config section a field holds: `Model`, or an optional `Model | None` (off unless
    one of its flags is given)."""
    union = typing.get_origin(annotation) in (typing.Union, types.UnionType)
    for candidate in (annotation, *(typing.get_args(annotation) if union else ())):
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
    return None


def _is_list(annotation: Any) -> bool:
    return typing.get_origin(annotation) in (list, tuple)


def _add_flags(parser: argparse.ArgumentParser, model: type[BaseModel], prefix: str = "") -> None:
    for name, field in model.model_fields.items():
        if (section := _model_of(field.annotation)) is not None:
            _add_flags(parser, section, f"{prefix}{name}.")
            continue
        default = field.default
        if _is_list(field.annotation) and default is not None:
            default = ",".join(map(str, default))
        help_text = f"{field.description or ''} (default: {default})".replace("%", "%%")
        parser.add_argument(
            f"--{prefix}{name}",
            dest=f"{prefix}{name}",
            default=argparse.SUPPRESS,
            metavar=name.upper(),
            help=help_text,
        )


def _set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    for parent in parents:
        data = data.setdefault(parent, {})
    data[leaf] = value


def _field_annotation(model: type[BaseModel], dotted: str) -> Any:
    *parents, leaf = dotted.split(".")
    for parent in parents:
        model = _model_of(model.model_fields[parent].annotation)
    return model.model_fields[leaf].annotation


def load_config(
    model: type[ConfigT], path: str | Path | None = None, overrides: dict[str, Any] | None = None
) -> ConfigT:
    """Defaults, then the YAML file, then dotted `overrides` (`{"split.seed": 3}`)."""
    data: dict[str, Any] = {}
    if path is not None:
        loaded = yaml.safe_load(Path(path).read_text()) or {}
        if not isinstance(loaded, dict):
            raise ValueError(f"{path}: expected a mapping of config keys at the top level")
        data = loaded
    for dotted, value in (overrides or {}).items():
        _set_dotted(data, dotted, value)
    return model.model_validate(data)


def parse_config(
    model: type[ConfigT], argv: Sequence[str] | None = None, description: str | None = None
) -> ConfigT:
    """Build the CLI of a job from its config model and parse `argv` into a config."""
    parser = argparse.ArgumentParser(
        description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", metavar="YAML", help="YAML file of config values")
    _add_flags(parser, model)
    args = vars(parser.parse_args(argv))
    path = args.pop("config", None)
    overrides = {
        key: [item.strip() for item in value.split(",") if item.strip()]
        if _is_list(_field_annotation(model, key))
        else value
        for key, value in args.items()
    }
    try:
        return load_config(model, path, overrides)
    except (ValidationError, ValueError, FileNotFoundError) as exc:
        parser.error(str(exc))


def dump_config(config: BaseModel, path: str | Path) -> None:
    """Write the resolved config beside a run's results, so the run can be repeated."""
    Path(path).write_text(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))
