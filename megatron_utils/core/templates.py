"""Reports and model cards from Jinja2 templates in `megatron_utils/templates/` (HTML ones autoescaped)."""

from __future__ import annotations

import functools
from typing import Any

import jinja2


@functools.cache
def _environment() -> jinja2.Environment:
    return jinja2.Environment(loader=jinja2.PackageLoader("megatron_utils", "templates"),
                              autoescape=jinja2.select_autoescape(["html"], default_for_string=False),
                              trim_blocks=True, lstrip_blocks=True, undefined=jinja2.StrictUndefined,
                              keep_trailing_newline=True)


def render(template: str, **context: Any) -> str:
    """The named template filled with `context`; an unknown variable is an error, not an empty string."""
    return _environment().get_template(template).render(**context)
