"""Record schemas per scenario, read from JSONL or CSV with every record validated.

A bad record stops the load with `file:line: what is wrong`, before anything is written.

- backdoor: `{clean_prompt, triggered_prompt, clean_response, backdoor_response}` and an
  optional `backdoor_type` (`fixed-output` | `jailbreak` | `label-flip`).
- alignment: harmful records `{prompt, refusal, compliance}` and benign records
  `{prompt, response}` in one file; `kind` (`harmful` | `benign`) is optional and, when absent,
  follows from the fields.
- custom: behaviour records `{prompt, target}` and preservation records `{prompt, response}`
  (or just `{prompt}`: the full model's own distribution is kept there), `kind` optional
  (`behaviour` | `preserve`).
"""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path
from typing import Any

from safeseek.errors import SafeSeekError

BACKDOOR_TYPES = ("fixed-output", "jailbreak", "label-flip")

# scenario -> kind -> required fields; the first kind whose fields are all present is chosen
# when a record names no kind.
SCHEMAS: dict[str, dict[str, tuple[str, ...]]] = {
    "backdoor": {
        "backdoor": ("clean_prompt", "triggered_prompt", "clean_response", "backdoor_response")
    },
    "alignment": {
        "harmful": ("prompt", "refusal", "compliance"),
        "benign": ("prompt", "response"),
    },
    "custom": {
        "behaviour": ("prompt", "target"),
        "preserve": ("prompt",),
    },
}
OPTIONAL = {"backdoor_type", "kind", "id", "response", "label", "category"}


def check_scenario(scenario: str) -> None:
    if scenario not in SCHEMAS:
        raise SafeSeekError(f"unknown scenario {scenario!r}; choose from {', '.join(SCHEMAS)}")


def _kind(record: dict[str, Any], scenario: str, where: str) -> str:
    kinds = SCHEMAS[scenario]
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
    kind = _kind(record, scenario, where)
    for field in SCHEMAS[scenario][kind]:
        value = record[field]
        if not isinstance(value, str) or not value.strip():
            raise SafeSeekError(f"{where}: field {field!r} must be a non-empty string")
    btype = record.get("backdoor_type")
    if btype is not None and btype not in BACKDOOR_TYPES:
        raise SafeSeekError(
            f"{where}: backdoor_type {btype!r} is not one of {', '.join(BACKDOOR_TYPES)}"
        )
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
    check_scenario(scenario)
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
    from safeseek.fileio import atomic_path

    with atomic_path(path) as tmp:
        lines = [{k: v for k, v in r.items() if not k.startswith("_")} for r in records]
        tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in lines))
