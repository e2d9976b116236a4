"""Atomic JSONL writing, shared by the data generators."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable


def write_jsonl(path: str | os.PathLike, rows: Iterable[dict]) -> int:
    """Write ``rows`` to ``path`` through a temporary sibling and one rename (no half-written file);
    returns the number of rows."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    n = 0
    with tmp.open("w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row) + "\n")
            n += 1
    os.replace(tmp, path)
    return n
