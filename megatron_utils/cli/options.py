"""Command-line options made from the config dataclasses, so every setting is reachable and its choices
come from one place. A recipe (`--recipe`) gives the starting values; a flag overrides one of them."""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from collections.abc import Iterable, Sequence
from typing import Any

from ..recipes import Recipe, list_recipes, load_recipe


def add_recipe_option(parser: argparse.ArgumentParser, default: str | None = None) -> None:
    parser.add_argument("--recipe", default=default, help=f"a bundled recipe ({', '.join(list_recipes())}) "
                        "or a .yaml file: the starting value of every setting (default: the configs' own)")


def recipe_from(args: argparse.Namespace) -> Recipe:
    return load_recipe(args.recipe) if args.recipe else Recipe()


def scalar_type(hint: Any) -> type | None:
    """int, float, str or bool for a field of that type (optional or not); None for anything else."""
    options = [option for option in typing.get_args(hint) if option is not type(None)] \
        if isinstance(hint, types.UnionType) else [hint]
    return options[0] if len(options) == 1 and options[0] in (int, float, str, bool) else None


def add_config_options(parser: argparse.ArgumentParser, config: type, *, skip: Iterable[str] = (),
                       choices: dict[str, Sequence[str]] | None = None) -> list[str]:
    """One flag per scalar field of `config` (booleans as --name/--no-name); returns the field names. A flag
    not given stays None, so the recipe's value stands."""
    hints, choices, added = typing.get_type_hints(config), choices or {}, []
    for field in dataclasses.fields(config):
        kind = scalar_type(hints[field.name])
        if field.name in skip or kind is None:
            continue
        flag = f"--{field.name.replace('_', '-')}"
        if kind is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None)
        else:
            parser.add_argument(flag, type=kind, choices=choices.get(field.name), default=None,
                                metavar=None if field.name in choices else kind.__name__.upper())
        added.append(field.name)
    return added


def given(args: argparse.Namespace, names: Iterable[str]) -> dict[str, Any]:
    """The options among `names` that the command line set."""
    return {name: getattr(args, name) for name in names if getattr(args, name) is not None}
