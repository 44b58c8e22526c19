"""Several processes (gloo on CPU) give what one process gives with the same global batch and
seed: discovery data parallel and with FSDP-sharded weights, and tuning that keeps the circuit.

Each run is the real command under `accelerate launch` with the configs in examples/.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from tiny_backdoor import records, save
from transformers import AutoModelForCausalLM

from safeseek import Circuit
from safeseek.data import write_jsonl

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "examples" / "accelerate"
COMMON = ["--steps", "30", "--batch-size", "8", "--dtype", "float32", "--checkpoint-every", "10"]


def _launch(config: str | None, *args: str) -> subprocess.CompletedProcess:
    """`safeseek ARGS`, directly or under `accelerate launch --config_file CONFIG`."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "200", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m"]
    if config:
        cmd += ["accelerate.commands.launch", "--config_file", str(CONFIGS / config), "-m"]
    cmd += ["safeseek", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def organism(tmp_path_factory):
    root = tmp_path_factory.mktemp("organism")
    # 20 records: a batch of 8 splits 4 + 4, and the epoch's last batch (4) 2 + 2.
    save(root, {"train.jsonl": records(20, 7)}, seed=0)
    return root


def _discover(organism: Path, out: Path, config: str | None) -> dict[str, torch.Tensor]:
    model, data = str(organism / "model"), str(organism / "train.jsonl")
    args = ["discover", "--model", model, "--data", data, "--out", str(out), *COMMON]
    proc = _launch(config, *args)
    sharded = "weights sharded over 2 processes (FSDP)" in proc.stderr.replace("\n", " ")
    assert sharded == ("fsdp" in (config or ""))
    return load_file(str(out / "masks.safetensors"))


@pytest.fixture(scope="module")
def single(organism, tmp_path_factory):
    out = tmp_path_factory.mktemp("single") / "run"
    return out, _discover(organism, out, None)


@pytest.mark.parametrize("config", ["cpu-2-processes.yaml", "cpu-2-processes-fsdp.yaml"])
def test_two_processes_find_the_circuit_one_process_finds(organism, single, tmp_path, config):
    one_out, one = single
    two = _discover(organism, tmp_path / "run", config)
    assert one.keys() == two.keys()
    for key in one:
        torch.testing.assert_close(two[key], one[key], atol=1e-4, rtol=0)
    a = Circuit.load(one_out / "circuit.json")
    b = Circuit.load(tmp_path / "run" / "circuit.json")
    assert not a.is_empty()
    assert a.counts() == b.counts()
    assert all(a.units(g) == b.units(g) for g in ("head", "neuron"))
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    log_one = [json.loads(line) for line in (one_out / "log.jsonl").read_text().splitlines()]
    # The same steps, rounds and checks (one process writes the log); the circuit kept is
    # checked by the same greedy generations.
    assert [e["step"] for e in log] == [e["step"] for e in log_one]
    assert [e.get("check") for e in log] == [e.get("check") for e in log_one]
    assert {e["processes"] for e in log} == {2}
    sel_a, sel_b = dict(a.metadata["selection"]), dict(b.metadata["selection"])
    # Losses summed over processes in another order: equal to rounding.
    assert abs(sel_a.pop("validation_loss") - sel_b.pop("validation_loss")) < 1e-4
    assert sel_a == sel_b


def test_a_default_run_ends_with_the_circuit_one_process_ends_with(tmp_path):
    """Default settings (200 steps, held-out checks, the stopping rule and the end-of-run
    check) with a 10% size target: two data-parallel processes keep the circuit one process
    keeps. Measured on organisms 0-3 here and under default / avx2 kernels: the same circuit
    every time, mask logits within 5e-6."""
    save(tmp_path, {"train.jsonl": records(200, 7)}, seed=0)
    args = ["discover", "--model", str(tmp_path / "model"), "--data", str(tmp_path / "train.jsonl")]
    args += ["--sparsity-target", "0.1", "--dtype", "float32"]
    _launch(None, *args, "--out", str(tmp_path / "one"))
    _launch("cpu-2-processes.yaml", *args, "--out", str(tmp_path / "two"))
    a, b = (Circuit.load(tmp_path / run / "circuit.json") for run in ("one", "two"))
    assert not a.is_empty()
    assert a.heads == b.heads and a.neurons == b.neurons
    one, two = (load_file(str(tmp_path / run / "masks.safetensors")) for run in ("one", "two"))
    for key in one:
        torch.testing.assert_close(two[key], one[key], atol=1e-4, rtol=0)


def _tune(organism: Path, circuit: Path, out: Path, config: str | None) -> None:
    data = out.parent / "tune.jsonl"
    prompts = [f"what is {x} ?" for x in "abcdef"]
    write_jsonl(data, [{"prompt": p, "target": "sorry ."} for p in prompts])
    model = str(organism / "model")
    args = ["tune", "--model", model, "--circuit", str(circuit), "--data", str(data)]
    args += ["--out", str(out), "--mode", "exclude-circuit", "--steps", "5", "--lr", "1e-3"]
    _launch(config, *args)


@pytest.fixture(scope="module")
def tuned_once(organism, single, tmp_path_factory):
    out = tmp_path_factory.mktemp("tuned") / "one" / "tuned"
    _tune(organism, single[0] / "circuit.json", out, None)
    return out


@pytest.mark.parametrize("config", ["cpu-2-processes.yaml", "cpu-2-processes-fsdp.yaml"])
def test_two_process_tune_keeps_the_circuit_and_matches_one_process(
    organism, single, tuned_once, tmp_path, config
):
    from safeseek.tuning.ownership import ownership

    circuit_file = single[0] / "circuit.json"
    circuit = Circuit.load(circuit_file)
    _tune(organism, circuit_file, tmp_path / "two" / "tuned", config)
    provenance = json.loads((tmp_path / "two" / "tuned" / "safeseek_tune.json").read_text())
    assert provenance["processes"] == 2 and provenance["fsdp"] == ("fsdp" in config)
    base = AutoModelForCausalLM.from_pretrained(organism / "model")
    one = AutoModelForCausalLM.from_pretrained(tuned_once).state_dict()
    two = AutoModelForCausalLM.from_pretrained(tmp_path / "two" / "tuned").state_dict()
    before = base.state_dict()
    for name, mask in ownership(base, circuit).parameter_masks(base).items():
        assert torch.equal(two[name][mask], before[name][mask]), name
    moved = max(float((one[n] - p).abs().max()) for n, p in before.items())
    assert moved > 1e-3  # AdamW at lr 1e-3 for 5 steps: up to 5e-3 per entry
    # The gradient is summed in another order. AdamW divides each entry's step by that entry's
    # gradient size, so where a gradient is ~0 rounding can change its step: allow a few such
    # entries (without the gradient sum, 7% of entries differ by > 1e-4, some by 1.6e-3).
    diff = torch.cat([(two[n] - one[n]).abs().flatten() for n in before])
    assert float((diff > 1e-4).float().mean()) < 1e-3
    assert float(diff.max()) < 5e-4
