"""A resumable store of finished work units: one small JSON file per unit, written atomically.

A unit is one (data set, method, setting, seed) fit, named by a key. A run that is killed
keeps every unit that finished; a rerun skips them. Files are renamed into place, so a
unit is either fully there or absent, never truncated.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .._io import write_json


def unit_key(**fields: Any) -> str:
    """A stable file-name-safe key for a unit described by ``fields``."""
    payload = json.dumps(fields, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:24]


class ResultStore:
    """``store.put(key, record)``, ``key in store``, ``store.get(key)``, ``store.records()``."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)

    def _path(self, key: str) -> Path:
        return self.directory / f"{key}.json"

    def __contains__(self, key: str) -> bool:
        return self._path(key).is_file()

    def get(self, key: str) -> dict[str, Any]:
        return json.loads(self._path(key).read_text())

    def put(self, key: str, record: dict[str, Any]) -> None:
        write_json(record, self._path(key))

    def records(self) -> Iterator[dict[str, Any]]:
        """Every finished unit, in key order (deterministic)."""
        for path in sorted(self.directory.glob("*.json")):
            yield json.loads(path.read_text())
