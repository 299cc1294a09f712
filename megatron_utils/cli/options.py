"""Command-line options made from the config dataclasses, so every setting is reachable and its choices
come from one place (the registries). A recipe (`--recipe`) gives the starting values; a flag overrides one
of them.

A flag is its field's name; within a section of the pipeline it carries the section's name too
(`--faces-crop-size` sets `FaceConfig.crop_size`), once (`--frames-per-clip`, not `--frames-frames-per-clip`).
An optional field takes `none` for None (`--faces-fallback none`); a float takes a fraction (`4/255`)."""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

from ..core.precision import AUTO as AUTO_DTYPE
from ..core.precision import DTYPES
from ..models.audio import list_audio_encoders
from ..models.backbones import AUTO, list_backbones
from ..preprocessing.audio import NO_AUDIO, AudioConfig
from ..preprocessing.depth import DepthConfig
from ..preprocessing.embed import EmbedConfig
from ..preprocessing.faces import AUTO as FACES_AUTO
from ..preprocessing.faces import TRACK_MODES, FaceConfig, list_detectors
from ..preprocessing.frames import SAMPLINGS, FramesConfig
from ..preprocessing.preprocess import PreprocessConfig
from ..recipes import Recipe, list_recipes, load_recipe

NONE = "none"


def add_recipe_option(parser: argparse.ArgumentParser, default: str | None = None) -> None:
    parser.add_argument("--recipe", default=default, help=f"a bundled recipe ({', '.join(list_recipes())}) "
                        "or a .yaml file: the starting value of every setting (default: the configs' own)")


def recipe_from(args: argparse.Namespace) -> Recipe:
    return load_recipe(args.recipe) if args.recipe else Recipe()


def number(text: str) -> float:
    """"0.25", "1e-5" or "4/255" as a float."""
    return float(Fraction(text))


def scalar_type(hint: Any) -> tuple[type | None, bool]:
    """(int, float, str or bool, whether None is allowed) for a field of that type; (None, _) for anything
    else."""
    options = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    kinds = [option for option in options if option is not type(None)]
    kind = kinds[0] if len(kinds) == 1 and kinds[0] in (int, float, str, bool) else None
    return kind, len(kinds) < len(options)


def parse_as(kind: type, optional: bool) -> Callable[[str], Any]:
    parse = number if kind is float else kind
    if not optional:
        return parse

    def optional_value(text: str) -> Any:
        return None if text.lower() == NONE else parse(text)

    optional_value.__name__ = f"{parse.__name__} or {NONE}"  # argparse names it in its errors
    return optional_value


@dataclass(frozen=True)
class ConfigOptions:
    """The flags made from one config dataclass: the argparse dest of each field."""

    dests: dict[str, str]

    def given(self, args: argparse.Namespace) -> dict[str, Any]:
        """The fields the command line set."""
        return {field: getattr(args, dest) for field, dest in self.dests.items() if hasattr(args, dest)}

    def apply(self, args: argparse.Namespace, config: Any) -> Any:
        """`config` with the fields the command line set."""
        return dataclasses.replace(config, **self.given(args))


def add_config_options(parser: argparse.ArgumentParser | argparse._ArgumentGroup, config: type, *,
                       section: str = "", skip: Iterable[str] = (),
                       choices: dict[str, Sequence[str]] | None = None) -> ConfigOptions:
    """One flag per scalar field of `config` (booleans as --name/--no-name). A flag not given sets nothing,
    so the recipe's value stands."""
    hints, choices, dests = typing.get_type_hints(config), choices or {}, {}
    for field in dataclasses.fields(config):
        kind, optional = scalar_type(hints[field.name])
        if field.name in skip or kind is None:
            continue
        named = not section or field.name.startswith(f"{section}_")
        dest = field.name if named else f"{section}_{field.name}"
        flag = f"--{dest.replace('_', '-')}"
        default = field.default if field.default is not dataclasses.MISSING else field.default_factory()
        text = f"{config.__name__}.{field.name} (default {NONE if default is None else default})"
        if kind is bool:
            parser.add_argument(flag, dest=dest, action=argparse.BooleanOptionalAction,
                                default=argparse.SUPPRESS, help=text)
        elif field.name in choices:
            names = [*choices[field.name], *([NONE] if optional else [])]
            parser.add_argument(flag, dest=dest, type=parse_as(kind, optional), default=argparse.SUPPRESS,
                                choices=[*choices[field.name], *([None] if optional else [])],
                                metavar=f"{{{','.join(names)}}}", help=text)
        else:
            parser.add_argument(flag, dest=dest, type=parse_as(kind, optional), default=argparse.SUPPRESS,
                                metavar=kind.__name__.upper(), help=text)
        dests[field.name] = dest
    return ConfigOptions(dests)


# The pipeline's stages: each section of PreprocessConfig, its config and the choices its registries give.
STAGES: dict[str, type] = {"frames": FramesConfig, "faces": FaceConfig, "depth": DepthConfig,
                           "embed": EmbedConfig, "audio": AudioConfig}


def stage_choices() -> dict[str, dict[str, Sequence[str]]]:
    backbones, dtypes = [AUTO, *list_backbones()], [AUTO_DTYPE, *DTYPES]
    return {"frames": {"sampling": SAMPLINGS},
            "faces": {"detector": [FACES_AUTO, *list_detectors()], "fallback": list_detectors(),
                      "track": TRACK_MODES},
            "depth": {"dtype": dtypes},
            "embed": {"rgb_backbone": backbones, "depth_backbone": backbones, "dtype": dtypes},
            "audio": {"encoder": [NO_AUDIO, *list_audio_encoders()]}}


def add_stage_options(parser: argparse.ArgumentParser, sections: Iterable[str],
                      skip: dict[str, Iterable[str]] | None = None) -> dict[str, ConfigOptions]:
    """The flags of the named pipeline sections, one argument group each."""
    choices, skip = stage_choices(), skip or {}
    return {section: add_config_options(
        parser.add_argument_group(f"{section} ({STAGES[section].__name__}; a recipe's values replace the "
                                  f"defaults)"),
        STAGES[section], section=section, skip=skip.get(section, ()), choices=choices[section])
        for section in sections}


def preprocess_config(args: argparse.Namespace, options: dict[str, ConfigOptions]) -> PreprocessConfig:
    """The recipe's preprocessing with the sections' flags applied."""
    base = recipe_from(args).preprocess
    return dataclasses.replace(base, **{section: flags.apply(args, getattr(base, section))
                                        for section, flags in options.items()})


def stage_config(args: argparse.Namespace, options: dict[str, ConfigOptions], section: str) -> Any:
    """One stage's config: the recipe's, with its flags applied (for a stage run on its own)."""
    return options[section].apply(args, getattr(recipe_from(args).preprocess, section))
