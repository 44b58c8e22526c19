"""Atomic file and directory writes: a crash never leaves a half-written result behind."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from safeseek.errors import SafeSeekError


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it replaces `path` in one rename.

    Works for files and directories; on an exception the temporary is removed and `path` is
    left as it was. An existing directory is first renamed aside (not deleted), so `path`
    is missing only between two renames, never half-written.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    staged = tmp / target.name
    try:
        yield staged
        if target.is_dir() and not target.is_symlink():
            os.replace(target, tmp / "previous")
        os.replace(staged, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_json(path: str | os.PathLike[str], obj: Any) -> None:
    """Write `obj` as indented JSON, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n")


def read_jsonl(path: str | os.PathLike[str]) -> list[Any]:
    """Every row of a JSONL file SafeSeek wrote (logs, generations, splits); blank lines skipped.
    Users' record files go through `data.load_records`, which names a bad line."""
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def settings_key(settings: Any, length: int = 16) -> str:
    """A cache key: the sha256 of `settings` as sorted JSON, cut to `length` hex digits."""
    blob = json.dumps(settings, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:length]


def check_out_dir(path: str | os.PathLike[str]) -> Path:
    """Refuse, before any work, an output directory that names an existing file."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise SafeSeekError(f"{path} is a file; --out names a directory to write into")
    return path


def write_checkpoint(
    model: Any,
    tokenizer: Any,
    out: str | os.PathLike[str],
    provenance: dict[str, Any],
    name: str,
    state_dict: dict[str, Any] | None = None,
) -> Path:
    """A plain Hugging Face checkpoint (safetensors), its tokenizer and a provenance JSON file
    `name`, written atomically: an interrupted save leaves no directory behind. `state_dict`:
    the weights to write instead of the model's own (e.g. gathered from FSDP shards)."""
    out = check_out_dir(out)
    with atomic_path(out) as tmp:
        model.save_pretrained(tmp, state_dict=state_dict)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        (tmp / name).write_text(json.dumps(provenance, indent=2) + "\n")
    return out
