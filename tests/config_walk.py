"""The config walk: the modules a recipe's settings pass through, in the order the code hands them on, and
how often that walk climbs back up the layer order (`test_layers.FLOORS`).

    .venv/bin/python tests/config_walk.py    # the tiny demo's walk, step by step, with its moves and climbs

A step is a call, inside megatron_utils, of a function that receives a recipe or a stage config (an
instance of one of the package's dataclasses named `Recipe` or `*Config`) as an argument, `self` included
(dunder methods such as a config's own `__post_init__` excluded).
Consecutive steps in one module count once. A move is a change of module, counted once however often a
loop repeats it; a climb is a move to a module on a higher floor than the one before it: a reader who
followed the settings down into, say, `core.cache` has to go back up to find where they go next. Only the
calling process is traced (stage workers are not).
"""

from __future__ import annotations

import contextlib
import dataclasses
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

from test_layers import PACKAGE, floor

ROOT = str(PACKAGE) + "/"


def is_config(value: object) -> bool:
    kind = type(value)
    return (dataclasses.is_dataclass(value) and kind.__module__.startswith("megatron_utils")
            and (kind.__name__ == "Recipe" or kind.__name__.endswith("Config")))


@dataclass
class Walk:
    modules: list[str] = field(default_factory=list)  # the steps in call order, consecutive repeats merged

    @property
    def moves(self) -> list[tuple[str, str]]:
        """Each change of module once, in the order first taken: a reader follows a hand-over once,
        however many videos or epochs repeat it."""
        return list(dict.fromkeys(zip(self.modules, self.modules[1:], strict=False)))

    @property
    def climbs(self) -> list[tuple[str, str]]:
        return [(before, after) for before, after in self.moves if floor(after) > floor(before)]

    def describe(self) -> str:
        lines = [f"{len(set(self.modules))} modules, {len(self.moves)} moves, "
                 f"{len(self.climbs)} climbs back up"]
        lines += [f"  {'^' if floor(after) > floor(before) else ' '} {before} (floor {floor(before)}) -> "
                  f"{after} (floor {floor(after)})" for before, after in self.moves]
        return "\n".join(lines)


@contextlib.contextmanager
def config_walk() -> Iterator[Walk]:
    """Trace the calls of the `with` block (this thread) into a `Walk`."""
    walk = Walk()

    def profile(frame: FrameType, event: str, _: Any) -> None:
        if event != "call" or not frame.f_code.co_filename.startswith(ROOT):
            return
        code = frame.f_code
        if code.co_name.startswith("__"):  # a config's own __post_init__ is not where it is handed on
            return
        arguments = code.co_varnames[:code.co_argcount + code.co_kwonlyargcount]
        if any(is_config(frame.f_locals.get(name)) for name in arguments):
            module = frame.f_globals.get("__name__", "")
            if not walk.modules or walk.modules[-1] != module:
                walk.modules.append(module)

    previous = sys.getprofile()
    sys.setprofile(profile)
    try:
        yield walk
    finally:
        sys.setprofile(previous)


def tiny_demo_walk(folder: Path, out: Path) -> Walk:
    """The walk of `run_demo` on the tiny mini dataset in `folder` with the end-to-end test's recipe."""
    from test_end_to_end import tiny_demo_config

    from megatron_utils.demo import run_demo

    config = tiny_demo_config(folder, out)
    with config_walk() as walk:
        run_demo(config)
    return walk


if __name__ == "__main__":
    import tempfile

    from megatron_utils.datasets.mini import build_mini

    with tempfile.TemporaryDirectory() as tmp:
        build_mini("tiny", Path(tmp) / "tiny", seed=0)
        print(tiny_demo_walk(Path(tmp) / "tiny", Path(tmp)).describe())
