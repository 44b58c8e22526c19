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
    for command in ("info", "organism", "discover", "evaluate", "tune", "export", "demo"):
        assert command in proc.stdout


def test_organism_options_default_to_the_recipes():
    """The CLI spells OrganismSpec's defaults as literals (importing it would slow every
    command); they must agree."""
    import inspect

    from safeseek import cli
    from safeseek.organisms import OrganismSpec

    for command in (cli.organism_align, cli.organism_backdoor):
        params = inspect.signature(command).parameters
        for name in ("lr", "distill", "steps", "max_new_tokens"):
            assert params[name].default == getattr(OrganismSpec, name), (command, name)


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


def _tune_case(tmp_path):
    """A tiny model directory, a circuit and tuning data; returns the model, the circuit and
    the `tune` arguments that name them."""
    import json

    from safeseek import Circuit

    model_dir = tmp_path / "model"
    model = build("llama")
    model.save_pretrained(model_dir)
    tiny_tokenizer().save_pretrained(model_dir)
    circuit = Circuit(heads=[(0, 1)], neurons=[(1, 3)])
    circuit.save(tmp_path / "circuit.json")
    data = tmp_path / "data.jsonl"
    rows = [{"prompt": f"what is {a} + {a} ?", "target": f"{2 * a} ."} for a in range(8)]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    args = ["tune", "--model", str(model_dir), "--circuit", str(tmp_path / "circuit.json")]
    return model, circuit, [*args, "--data", str(data)]


def _circuit_unchanged(model, circuit, out) -> bool:
    import torch
    from transformers import AutoModelForCausalLM

    from safeseek.tuning import ownership

    tuned = dict(AutoModelForCausalLM.from_pretrained(out).named_parameters())
    before = dict(model.named_parameters())
    masks = ownership(model, circuit).parameter_masks(model)
    assert any(not torch.equal(tuned[n], p) for n, p in before.items())
    return all(torch.equal(tuned[n][m], before[n][m]) for n, m in masks.items())


def test_tune_writes_a_plain_checkpoint_that_keeps_the_circuit(tmp_path):
    import json

    model, circuit, args = _tune_case(tmp_path)
    out = tmp_path / "tuned"
    args += ["--out", str(out), "--mode", "exclude-circuit", "--lora"]
    proc = run(*args, "--steps", "3", "--lr", "0.05", "--batch-size", "4")
    assert proc.returncode == 0, proc.stderr
    assert _circuit_unchanged(model, circuit, out)
    provenance = json.loads((out / "safeseek_tune.json").read_text())
    assert provenance["mode"] == "exclude-circuit" and provenance["method"] == "lora"


def test_tune_with_an_anchor_keeps_the_circuit_frozen(tmp_path):
    import json

    model, circuit, common = _tune_case(tmp_path)
    anchor = tmp_path / "anchor.jsonl"
    anchor.write_text("".join(json.dumps({"prompt": f"how to {w} ?"}) + "\n" for w in "abcd"))
    common += ["--anchor", str(anchor)]
    out = tmp_path / "tuned"
    args = ["--out", str(out), "--mode", "exclude-circuit", "--anchor-weight", "10"]
    proc = run(*common, *args, "--steps", "3", "--lr", "0.05")
    assert proc.returncode == 0, proc.stderr
    assert _circuit_unchanged(model, circuit, out)
    provenance = json.loads((out / "safeseek_tune.json").read_text())
    assert provenance["anchor_weight"] == 10 and provenance["anchor_file"] == str(anchor)
    assert provenance["anchor_last"] > 0

    proc = run(*common, "--out", str(tmp_path / "o2"), "--mode", "circuit-only")
    _one_line(proc, "use it with --mode exclude-circuit")


def test_tune_bad_record_names_file_and_line(tmp_path):
    data = tmp_path / "data.jsonl"
    data.write_text('{"prompt": "hi", "target": "yo"}\n{"target": "no prompt"}\n')
    (tmp_path / "c.json").write_text('{"format": "safeseek-circuit", "version": 1}')
    proc = run(
        "tune", "--circuit", str(tmp_path / "c.json"), "--data", str(data),
        "--out", str(tmp_path / "o"), "--mode", "circuit-only",
    )  # fmt: skip
    assert proc.returncode == 1
    assert f"{data}:2: missing field 'prompt'" in proc.stderr


def _one_line(proc: subprocess.CompletedProcess, message: str) -> None:
    assert proc.returncode == 1, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip() and "Loading weights" not in ln]
    assert len(lines) == 1 and message in lines[0], proc.stderr


def test_an_out_that_names_a_file_is_refused_before_any_work(tmp_path):
    taken = tmp_path / "taken"
    taken.write_text("not a directory")
    (tmp_path / "c.json").write_text('{"format": "safeseek-circuit", "version": 1}')
    data = tmp_path / "data.jsonl"
    data.write_text('{"prompt": "hi", "target": "yo"}\n')
    circuit = ["--circuit", str(tmp_path / "c.json"), "--out", str(taken)]
    for proc in (
        run("tune", *circuit, "--data", str(data), "--mode", "circuit-only"),
        run("export", *circuit),
    ):
        _one_line(proc, f"{taken} is a file; --out names a directory")
    assert taken.read_text() == "not a directory"


def test_a_damaged_checkpoint_on_resume_is_one_line(tmp_path):
    import json

    from tiny_backdoor import records

    model_dir = tmp_path / "model"
    build("llama").save_pretrained(model_dir)
    tiny_tokenizer().save_pretrained(model_dir)
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in records(12, 0)))
    out = tmp_path / "run"
    args = ["discover", "--model", str(model_dir), "--data", str(data), "--out", str(out)]
    args += ["--steps", "2", "--validation-fraction", "0"]
    assert run(*args).returncode == 0
    state, tensors = out / "checkpoint" / "state.json", out / "checkpoint" / "state.safetensors"
    original = state.read_text()
    state.write_text(original[: len(original) // 2])
    _one_line(run(*args, "--resume"), f"{out / 'checkpoint'} is damaged (JSONDecodeError")
    state.write_text(original)
    tensors.write_bytes(tensors.read_bytes()[:100])
    _one_line(run(*args, "--resume"), f"{out / 'checkpoint'} is damaged")
