"""The `safeseek` command as a user runs it: help, a real command, one-line errors."""

from __future__ import annotations

import os
import subprocess
import sys

from conftest import build, tiny_tokenizer


def run(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "200"}
    cmd = [sys.executable, "-m", "safeseek", *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)


def test_help_lists_commands():
    proc = run("--help")
    assert proc.returncode == 0
    for command in ("info", "organism", "discover", "evaluate", "export", "demo"):
        assert command in proc.stdout


def test_info_on_a_model_directory(tmp_path):
    build("gemma").save_pretrained(tmp_path)
    tiny_tokenizer().save_pretrained(tmp_path)
    proc = run("info", "--model", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert "gemma" in proc.stdout and "head_dim" in proc.stdout and "32" in proc.stdout


def test_bad_model_is_a_one_line_error(tmp_path):
    proc = run("info", "--model", str(tmp_path / "nope"))
    assert proc.returncode == 1
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "no such model directory" in lines[0]
    assert "Traceback" not in proc.stderr


def test_bad_weights_option_is_one_line(tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text("")
    proc = run("discover", "--data", str(data), "--weights", "without_clean")
    assert proc.returncode == 1
    assert "--weights takes name=number pairs" in proc.stderr
