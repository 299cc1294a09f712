"""Dataset indexes: every supported dataset read into one pandas table (see docs/ARCHITECTURE.md).

    result = build_index("/data/FaceForensics++")      # layout recognised: ffpp, dfdc, celebdf, generic
    print(summarize(result.table)); write_index(result.table, "index.csv")
"""

from __future__ import annotations

# Importing the adapter modules registers them.
from . import celebdf, dfdc, ffpp, generic  # noqa: F401
from .index import (
    ADAPTERS,
    COLUMNS,
    IndexResult,
    build_index,
    detect_dataset,
    read_index,
    register_adapter,
    summarize,
    write_index,
)

__all__ = ["ADAPTERS", "COLUMNS", "IndexResult", "build_index", "detect_dataset", "read_index",
           "register_adapter", "summarize", "write_index"]
