"""The pipeline's cached stages: an organism, then a discovery run on it.

Each stage lives in the cache under a hash of everything that defines its result, so a second
run of a benchmark or of the demo reuses the work; an interrupted discovery resumes from its
last checkpoint.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console

from safeseek.assets import cache_dir
from safeseek.data import data_hash, load_records
from safeseek.discover import CHECKPOINT_VERSION, Discovery
from safeseek.fileio import settings_key
from safeseek.models import load_model
from safeseek.models.load import fast_dtype
from safeseek.organisms import OrganismSpec, build_organism
from safeseek.organisms.build import cached_dir, source_id
from safeseek.settings import DiscoverConfig


def organism(spec: OrganismSpec, console: Console | None = None) -> tuple[Path, dict[str, Any]]:
    """The organism's cached directory (built on first use) and its organism.json."""
    path = cached_dir(spec.kind, spec.type, spec.key())
    return path, build_organism(spec, path, console)


def discovery_dir(model: str | Path, data: str | Path, config: DiscoverConfig) -> Path:
    """Where the discovery run of these settings lives in the cache."""
    blob = [source_id(str(model)), data_hash(data), config.to_dict(), CHECKPOINT_VERSION]
    return cache_dir() / "runs" / f"{config.scenario}-{settings_key(blob)}"


def discovery(
    model: str | Path, data: str | Path, config: DiscoverConfig, console: Console | None = None
) -> Path:
    """The run directory of a discovery with these settings: reused when finished, resumed
    when interrupted, run otherwise."""
    out = discovery_dir(model, data, config)
    if (out / "circuit.json").is_file():
        return out
    lm, tok = load_model(str(model), dtype=fast_dtype())
    records = load_records(data, config.scenario)
    run = Discovery(lm, tok, records, config, out=out, data_hash=data_hash(data))
    run.run(resume=True, console=console)
    return out
