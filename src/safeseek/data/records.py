"""Records of a scenario, read from JSONL or CSV with every record validated against the
scenario's schema (`scenarios/`, `Scenario.kinds`).

A bad record stops the load with `file:line: what is wrong`, before anything is written.
"""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path
from typing import Any

from safeseek.errors import SafeSeekError
from safeseek.fileio import atomic_path
from safeseek.scenarios import get_scenario


def _kind(record: dict[str, Any], scenario: str, where: str) -> str:
    kinds = get_scenario(scenario).kinds
    if "kind" in record:
        kind = record["kind"]
        if kind not in kinds:
            raise SafeSeekError(
                f"{where}: kind {kind!r} is not one of {', '.join(kinds)} for {scenario} records"
            )
        missing = [f for f in kinds[kind] if f not in record]
        if missing:
            raise SafeSeekError(f"{where}: missing field {missing[0]!r} for a {kind} record")
        return kind
    for kind, fields in kinds.items():
        if all(f in record for f in fields):
            return kind
    # Name the first missing field of the kind the record comes closest to.
    closest = max(kinds, key=lambda k: sum(f in record for f in kinds[k]))
    missing = next(f for f in kinds[closest] if f not in record)
    raise SafeSeekError(f"{where}: missing field {missing!r} for a {scenario} {closest} record")


def validate(record: Any, scenario: str, where: str) -> dict[str, Any]:
    """One record checked against its scenario's schema; returns it with `kind` filled in and
    `_where` (file:line) kept for later messages."""
    if not isinstance(record, dict):
        raise SafeSeekError(f"{where}: a record must be a JSON object, got {type(record).__name__}")
    spec = get_scenario(scenario)
    kind = _kind(record, scenario, where)
    for field in spec.kinds[kind]:
        value = record[field]
        if not isinstance(value, str) or not value.strip():
            raise SafeSeekError(f"{where}: field {field!r} must be a non-empty string")
    for field, allowed in spec.choices.items():
        value = record.get(field)
        if value is not None and value not in allowed:
            raise SafeSeekError(f"{where}: {field} {value!r} is not one of {', '.join(allowed)}")
    return {**record, "kind": kind, "_where": where}


def _rows(path: Path) -> list[tuple[int, Any]]:
    """(line number, parsed row) for JSONL or CSV files."""
    if path.suffix.lower() == ".csv":
        with open(path, newline="") as fh:
            reader = csv.DictReader(fh)
            return [(reader.line_num, dict(row)) for row in reader]
    rows = []
    with open(path) as fh:
        for number, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                rows.append((number, json.loads(line)))
            except json.JSONDecodeError as exc:
                raise SafeSeekError(f"{path}:{number}: not valid JSON ({exc.msg})") from None
    return rows


def load_records(path: str | Path, scenario: str) -> list[dict[str, Any]]:
    """Every record of `path` (JSONL, or CSV with a header row), validated for `scenario`."""
    get_scenario(scenario)
    path = Path(path)
    if not path.is_file():
        raise SafeSeekError(f"{path}: no such data file")
    records = [validate(row, scenario, f"{path}:{n}") for n, row in _rows(path)]
    if not records:
        raise SafeSeekError(f"{path}: no records")
    return records


def data_hash(path: str | Path) -> str:
    """sha256 of a data file, recorded with results so runs can be traced to their data."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def write_jsonl(path: str | Path, records: list[dict[str, Any]]) -> None:
    """Records to JSONL, atomically (private `_` keys left out)."""
    with atomic_path(path) as tmp:
        lines = [{k: v for k, v in r.items() if not k.startswith("_")} for r in records]
        tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in lines))
