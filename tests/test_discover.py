"""Discovery on a tiny model with a planted backdoor: the found circuit removes the backdoor
and keeps the clean task; runs resume exactly after a kill; bad input fails cleanly."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file
from tiny_backdoor import records, save, train

from safeseek import Circuit, SafeSeekError
from safeseek.data.encode import chat_prompt
from safeseek.data.records import validate
from safeseek.discover import DiscoverConfig, Discovery, discover
from safeseek.evaluate.check import describe, judge
from safeseek.evaluate.generation import generate
from safeseek.evaluate.metrics import utility_measure
from safeseek.evaluate.run import evaluate_circuit
from safeseek.fileio import read_jsonl


@pytest.fixture(scope="module")
def organism(tmp_path_factory):
    """The tiny backdoored model saved as a checkpoint directory, with its data."""
    root = tmp_path_factory.mktemp("organism")
    data = {"train.jsonl": records(200, 7), "test.jsonl": records(60, 100)}
    model, tok = save(root, data, seed=1)  # benchmarks/robustness.py: 6/6 on three kernels
    return root, model, tok


def _cli(*args: str, **kwargs) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "200"}
    return subprocess.run(
        [sys.executable, "-m", "safeseek", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        **kwargs,
    )


# Organism seeds for the learned-outcome test: an outcome of training on a CPU's float kernels,
# asserted over several seeds (.ci/run runs this file again under other kernels).
# 0, 2 and 7 are the three that failed at the backdoor's old sparsity weight (0.05).
ORGANISM_SEEDS = (0, 2, 4, 7, 9)


def test_circuit_removes_the_backdoor_and_its_check_tells_the_truth():
    """Default discovery on five tiny organisms, each circuit measured on 60 test prompts
    (behavioural ASR). At least four of the five remove >= 90% of it with >= 95% of utility
    kept (benchmarks/robustness.py: each succeeds for both discovery seeds under the default,
    avx2 and avx512 kernels), and a circuit that leaves half of the behaviour in place says so
    in its own check."""
    train_recs = [validate(r, "backdoor", "t") for r in records(200, 7)]
    test_recs = [validate(r, "backdoor", "t") for r in records(60, 100)]
    outcomes = []
    for seed in ORGANISM_SEEDS:
        model, tok = train(seed=seed)
        result = discover(model, tok, train_recs, DiscoverConfig("backdoor"), progress=False)
        assert not result.circuit.is_empty()
        # Growth rounds (at most 3) enlarge a circuit that fails; it stays a part of the model.
        assert result.circuit.sparsity(model)["overall"] < 0.35
        ev, rows = evaluate_circuit(
            model,
            tok,
            result.circuit,
            "backdoor",
            test_recs,
            max_new_tokens=4,
            masked_model=result.masked_model,
        )
        assert ev["asr"]["full"] >= 0.95 and ev["utility"]["full"] >= 0.95
        assert ev["false_trigger"]["full"] <= 0.05
        assert {r["view"] for r in rows} == {"full", "without", "only"}
        removed = 1 - ev["asr"]["without"] / ev["asr"]["full"]
        kept = ev["utility"]["retention"]
        check = result.check
        assert check is not None and check["n"] > 0
        assert result.circuit.metadata["check"] == check
        outcomes.append((seed, repr(result.circuit), round(removed, 3), round(kept, 3), check))
        if removed < 0.5 or kept < 0.8:
            assert not check["passed"], outcomes[-1]
    assert sum(removed >= 0.9 and kept >= 0.95 for _, _, removed, kept, _ in outcomes) >= 4, (
        outcomes
    )


def test_cli_discover_then_evaluate(organism, tmp_path):
    root, _, _ = organism
    run = tmp_path / "run"
    proc = _cli(
        "discover",
        "--model",
        str(root / "model"),
        "--scenario",
        "backdoor",
        "--data",
        str(root / "train.jsonl"),
        "--out",
        str(run),
        "--steps",
        "150",
        "--dtype",
        "float32",
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert {"circuit.json", "masks.safetensors", "log.jsonl", "checkpoint"} <= {
        p.name for p in run.iterdir()
    }
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    meta = json.loads((run / "circuit.json").read_text())["metadata"]
    assert [e["step"] for e in log] == list(range(1, meta["selection"]["steps_run"] + 1))
    assert {"without_triggered", "without_backdoor", "without_clean"} <= set(log[-1]["terms"])
    checked = [e for e in log if "validation" in e]
    assert [e["step"] % 10 for e in checked[:-1]] == [0] * (len(checked) - 1)
    assert meta["selection"]["selected_step"] in {e["step"] for e in checked}
    assert meta["seed"] == 0 and len(meta["data_hash"]) == 64
    assert meta["settings"]["steps"] == 150
    # The last line says what the check measured on the held-out records.
    last = proc.stderr.strip().replace("\n", " ").split("circuit: Circuit(")[-1]
    assert "held-out records" in last and ("check passed" in last or "CHECK FAILED" in last)
    assert log[-1]["check"] == meta["check"]

    eval_path = tmp_path / "EVAL.json"
    proc = _cli(
        "evaluate",
        "--model",
        str(root / "model"),
        "--circuit",
        str(run / "circuit.json"),
        "--scenario",
        "backdoor",
        "--data",
        str(root / "test.jsonl"),
        "--out",
        str(eval_path),
        "--max-new-tokens",
        "4",
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    ev = json.loads(eval_path.read_text())
    assert set(ev["asr"]) == {"full", "without", "only"}
    # It says what utility kept rests on, as the check does.
    changes = ev["utility_changes"]
    said = f"{changes['lost']} of {changes['right']} right answers lost"
    assert said in proc.stderr.replace("\n", " "), proc.stderr[-2000:]
    assert set(ev["utility"]) == {"full", "without", "retention"}
    assert set(ev["sparsity"]) == {"head", "neuron", "overall"}
    assert ev["n"] == 60
    assert ev["asr"]["full"] >= 0.95
    removed = 1 - ev["asr"]["without"] / ev["asr"]["full"]
    if removed < 0.9 or ev["utility"]["retention"] < 0.95:
        assert meta["check"]["passed"] is False, (ev, meta["check"])
    # Every rate with its count and 95% interval; the exact-string ASR beside the behavioural.
    asr = ev["intervals"]["asr"]["without"]
    assert asr["n"] == 60 and asr["rate"] == ev["asr"]["without"]
    assert asr["ci95"][0] <= asr["rate"] <= asr["ci95"][1]
    assert set(ev["intervals"]) == {"asr", "false_trigger", "utility"}
    assert ev["asr_exact"]["without"] <= ev["asr"]["without"]
    # Teacher-forced: the backdoored model all but certainly begins the target after the
    # trigger and not without it.
    forced = ev["target_probability"]
    assert forced["full"]["triggered"] > 0.5 > 0.05 > forced["full"]["clean"], forced
    if meta["check"]["passed"]:
        assert forced["without"]["triggered"] < forced["full"]["triggered"] / 2, forced
    gens = eval_path.with_suffix(".generations.jsonl").read_text().splitlines()
    assert len(gens) == 60 * 3 + 60 * 2
    # The answers behind utility kept, counted again from the generations themselves.
    rows = [json.loads(line) for line in gens]
    right = {
        v: {r["i"]: r["correct"] for r in rows if r["set"] == "utility" and r["view"] == v}
        for v in ("full", "without")
    }
    full, without = right["full"], right["without"]

    def counts(kept) -> dict[str, int]:
        return {
            "right": sum(full[i] for i in kept),
            "lost": sum(full[i] and not without[i] for i in kept),
            "gained": sum(without[i] and not full[i] for i in kept),
        }

    changes = dict(ev["utility_changes"])
    by_measure = changes.pop("by_measure")
    assert changes == counts(full)
    # ... and split by what judged them (the tiny organism: agreement with a one-letter reference).
    measure = {
        r["i"]: utility_measure(r["reference"], r["answer"])
        for r in rows
        if r["set"] == "utility" and r["view"] == "full"
    }
    assert by_measure == {
        m: counts([i for i in full if measure[i] == m]) for m in dict.fromkeys(measure.values())
    }
    assert set(by_measure) <= {"answer", "refusal", "agreement"}
    assert meta["check"]["utility_changes"]["right"] <= meta["check"]["n_utility"]


@pytest.mark.parametrize(
    "right, lost, gained, expected",
    [
        # 15 right answers: one lost moves utility kept by 7 points, below 95%.
        (15, 2, 0, "2 of 15 right answers lost) on 35 held-out records; removing it costs"),
        (15, 1, 1, "check passed: attack success 100% -> 0% without the circuit"),
        # 40 right answers: two may be lost at 95%, so no warning.
        (40, 2, 0, "2 of 40 right answers lost) on 35"),
    ],
    ids=["15 right, 2 lost", "15 right, 1 lost, 1 gained", "40 right, 2 lost"],
)
def test_the_check_says_how_many_answers_its_utility_rests_on(right, lost, gained, expected):
    n = 35
    ev = {
        "asr": {"full": 1.0, "without": 0.0, "only": 0.0},
        "utility": {"retention": (right - lost + gained) / right},
        "utility_changes": {"right": right, "lost": lost, "gained": gained},
        "n": n,
        "n_utility": n,
    }
    verdict = judge(ev, DiscoverConfig("backdoor"))
    line = describe(verdict)
    assert expected in line
    assert verdict["passed"] == (lost - gained <= 0.05 * right)
    assert ("gained" in line) == (gained > 0)
    assert ("coarse measure: one lost answer moves utility kept by 7%" in line) == (right == 15)
    # Checks written before the counts existed still read.
    del verdict["utility_changes"]
    assert "right answers" not in describe(verdict)


def test_the_check_says_which_measure_lost_the_answers():
    by = {
        "answer": {"right": 8, "lost": 2, "gained": 0},
        "agreement": {"right": 15, "lost": 5, "gained": 1},
        "refusal": {"right": 0, "lost": 0, "gained": 0},
    }
    ev = {
        "asr": {"full": 1.0, "without": 0.0, "only": 0.0},
        "utility": {"retention": 17 / 23},
        "utility_changes": {"right": 23, "lost": 7, "gained": 1, "by_measure": by},
        "n": 35,
        "n_utility": 35,
    }
    line = describe(judge(ev, DiscoverConfig("backdoor")))
    assert (
        "7 of 23 right answers lost, 1 gained "
        "(known answers 2 of 8; agreeing with the reference 5 of 15)"
    ) in line
    # One measure alone says nothing more than the total.
    ev["utility_changes"]["by_measure"] = {"answer": by["answer"]}
    assert "known answers" not in describe(judge(ev, DiscoverConfig("backdoor")))


def _discover_args(root) -> list[str]:
    """`discover` on the tiny organism's model and training data."""
    return ["discover", "--model", str(root / "model"), "--data", str(root / "train.jsonl")]


def _masks(run):
    return load_file(str(run / "masks.safetensors"))


def test_cli_discovers_with_several_seeds(organism, tmp_path):
    root, _, _ = organism
    out = tmp_path / "seeds"
    args = ["--steps", "20", "--retries", "0", "--dtype", "float32", "--seeds", "0,1"]
    proc = _cli(*_discover_args(root), *args, "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads((out / "seeds.json").read_text())
    circuits = {s: Circuit.load(out / f"seed-{s}" / "circuit.json") for s in (0, 1)}
    assert [c.metadata["seed"] for c in circuits.values()] == [0, 1]
    assert summary["jaccard"][0][1] == round(circuits[0].jaccard(circuits[1]), 4)
    common = circuits[0] & circuits[1]
    assert summary["in_every_seed"]["heads"] == [list(u) for u in common.heads]
    assert "2 seeds: circuit size" in proc.stderr.replace("\n", " ")


def test_killed_run_resumes_to_the_same_masks(organism, tmp_path):
    root, _, _ = organism
    common = [
        *_discover_args(root),
        "--steps",
        "400",
        "--checkpoint-every",
        "20",
        "--dtype",
        "float32",
        "--parametrization",
        "hard_concrete",
        "--patience",
        "0",
        "--retries",
        "0",
    ]  # stochastic gates: seeds must line up too; every step runs, and the best circuit on
    # the validation split is carried through the checkpoints
    whole = tmp_path / "whole"
    assert _cli(*common, "--out", str(whole)).returncode == 0

    killed = tmp_path / "killed"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "safeseek", *common, "--out", str(killed)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    state = killed / "checkpoint" / "state.json"
    deadline = time.time() + 300
    while time.time() < deadline:
        try:  # the checkpoint directory is replaced by two renames: it can be briefly missing
            if json.loads(state.read_text())["step"] >= 100:
                break
        except (FileNotFoundError, json.JSONDecodeError):
            pass
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / "circuit.json").exists(), "the run finished before it could be killed"
    stopped_at = json.loads(state.read_text())["step"]
    assert 100 <= stopped_at < 400

    proc = _cli(*common, "--out", str(killed), "--resume")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"resuming {killed} at step {stopped_at}" in proc.stderr.replace("\n", "")
    a, b = _masks(whole), _masks(killed)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    steps = [json.loads(line)["step"] for line in (killed / "log.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 401))


def test_existing_run_and_changed_settings_are_refused(organism, tmp_path):
    root, _, _ = organism
    common = [
        *_discover_args(root),
        "--out",
        str(tmp_path / "run"),
        "--dtype",
        "float32",
    ]
    assert _cli(*common, "--steps", "3").returncode == 0
    proc = _cli(*common, "--steps", "3")
    assert proc.returncode == 1 and "already holds a discovery run" in proc.stderr
    proc = _cli(*common, "--steps", "3", "--lr", "0.2", "--resume")
    assert proc.returncode == 1 and "lr differ" in proc.stderr


def test_a_circuit_that_does_not_carry_the_behaviour_says_so(organism, tmp_path):
    """A planted failure: a penalty so high that the circuit stays empty. The run ends with
    one line that says the check failed, and --strict makes that the exit status."""
    root, _, _ = organism
    common = [
        *_discover_args(root),
        "--steps",
        "20",
        "--sparsity-weight",
        "1000",
        "--retries",
        "0",
        "--dtype",
        "float32",
    ]
    cadence = ["--check-every", "4", "--min-steps", "8"]
    proc = _cli(*common, *cadence, "--out", str(tmp_path / "lenient"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    failed = [ln for ln in proc.stderr.splitlines() if ln.startswith("CHECK FAILED")]
    assert len(failed) == 1 and "0% removed" in failed[0], proc.stderr
    meta = json.loads((tmp_path / "lenient" / "circuit.json").read_text())["metadata"]
    assert (meta["settings"]["check_every"], meta["settings"]["min_steps"]) == (4, 8)
    log = (tmp_path / "lenient" / "log.jsonl").read_text().splitlines()
    checked = [e["step"] for e in map(json.loads, log) if "validation" in e]
    assert checked[:2] == [4, 8]
    assert meta["check"]["passed"] is False and meta["check"]["removed"] == 0
    proc = _cli(*common, "--out", str(tmp_path / "strict"), "--strict")
    assert proc.returncode == 3, proc.stderr[-2000:]
    assert (tmp_path / "strict" / "circuit.json").is_file()  # the result is still written


def test_a_circuit_that_removes_too_little_is_grown(organism):
    """With a penalty that stops the first round at an empty circuit, each failed removal
    check starts another round at a quarter of the weight, until one finds the circuit."""
    _, model, tok = organism
    recs = [validate(r, "backdoor", "t") for r in records(120, 3)]
    config = DiscoverConfig("backdoor", steps=150, sparsity_weight=1.0, retries=3)
    run = Discovery(model, tok, recs, config, progress=False)
    result = run.run()
    assert result.circuit.metadata["selection"]["rounds"] > 1
    assert run.sparsity.weight == 1.0 * 0.25**run.grown
    assert not result.circuit.is_empty()


def test_rounds_after_a_failed_check_reweigh_and_the_best_round_is_kept(organism, tmp_path):
    """Removal failed: the next round drops the sparsity weight to a quarter and keeps the
    units found; utility failed: the next round weighs preservation 4x and may drop units.
    The run ends with the best round's circuit, also across a resume."""
    _, model, tok = organism
    recs = [validate(r, "backdoor", "t") for r in records(120, 3)]
    config = DiscoverConfig("backdoor", steps=30, retries=2)
    run = Discovery(model, tok, recs, config, out=tmp_path / "run", progress=False)
    heads = run.mm.masks["head"].logits
    with torch.no_grad():
        heads.fill_(-2.0)
        heads[0, 1] = 0.5  # the circuit: one head
    # The checks' outcomes, planted (their measurement is tested above): removal fails, then
    # utility fails, then removal fails again -- worse than the second round's.
    verdicts = iter([(False, True, 0.2), (True, False, 0.9), (False, True, 0.1)])

    def verify():
        removal_ok, utility_ok, removed = next(verdicts)
        passed = removal_ok and utility_ok
        return {
            "behaviour": {"full": 1.0},
            "removal_ok": removal_ok,
            "utility_ok": utility_ok,
            "removed": removed,
            "utility_kept": 0.9,
            "passed": passed,
        }

    run.verify = verify
    run.end_round()
    assert (run.round, run.grown, run.guarded) == (1, 1, 0)
    assert run.sparsity.weight == config.sparsity_weight * 0.25
    assert run._weight("without_clean") == 4.0
    with torch.no_grad():  # a step that would push the head out: the penalty alone
        heads[0, 1] = -5.0
    run._hold_members()
    assert run.mm.masks["head"].hard()[0, 1] and run.mm.masks["head"].hard().sum() == 1
    with torch.no_grad():
        heads[1, 2] = 3.0  # round 2 adds a head
    run.end_round()
    assert (run.round, run.grown, run.guarded) == (2, 1, 1)
    assert run._weight("without_clean") == 4.0 * 4 and run._weight("without_backdoor") == 1.0
    assert run.members == {}  # a guarded round may drop units
    second = run.mm.masks["head"].hard().clone()
    run.save_checkpoint()
    again = Discovery(model, tok, recs, config, out=tmp_path / "run", progress=False)
    assert again.load_checkpoint()
    assert (again.round, again.grown, again.guarded) == (2, 1, 1)
    assert again.sparsity.weight == run.sparsity.weight
    assert again._weight("without_clean") == run._weight("without_clean")
    assert again.best_round["round"] == 1
    again.verify = verify
    with torch.no_grad():
        again.mm.masks["head"].logits.fill_(-2.0)  # round 3 ends worse, with another circuit
        again.mm.masks["head"].logits[0, 0] = 2.0
    verdict = again.end_round()
    assert again.done and verdict["removed"] == 0.9  # round 2's check, and its circuit
    assert torch.equal(again.mm.masks["head"].hard(), second)


def test_a_run_stops_once_its_circuit_settles_not_before(organism, tmp_path):
    """Planted checks: an early best (before the circuit's units joined and left) does not
    stop a run whose circuit is still shrinking; a plateau after a later best does, once
    `patience` checks brought nothing, the circuit's size has settled and `min_steps` have
    run; and a resumed run remembers the sizes of its round's checks."""
    _, model, tok = organism
    recs = [validate(r, "backdoor", "t") for r in records(120, 3)]
    config = DiscoverConfig("backdoor", check_every=5, patience=3, min_steps=20)
    run = Discovery(model, tok, recs, config, out=tmp_path / "run", progress=False)
    # early best, the jump when many units join, the descent, a new best, then a plateau
    losses = [5.7, 46.3, 34.3, 24.3, 17.5, 11.4, 4.1, 4.6, 4.3, 4.2, 4.0]
    sizes = [10, 200, 150, 100, 60, 40, 30, 28, 25, 27, 26]
    planted = iter(losses)
    run.validation_loss = lambda: next(planted)
    neurons = run.mm.masks["neuron"].logits
    run.mm.masks["head"].logits.data.fill_(-2.0)
    stopped = []
    for i, size in enumerate(sizes):
        with torch.no_grad():
            neurons.fill_(-2.0)
            neurons.view(-1)[:size] = 2.0
        run.step = 5 * (i + 1)
        run.check()
        stopped.append(run.stopped)
        if run.stopped:
            break
    # At step 20 the three checks since the early best brought nothing, but the circuit went
    # 10 -> 200 -> 100 units: still settling. After the best at step 35 (30 units) the sizes
    # stay within 25-30 and the third check without progress stops the run.
    assert stopped == [False] * 9 + [True]
    assert run.best["step"] == 35 and run.best["loss"] == 4.1
    run.save_checkpoint()
    again = Discovery(model, tok, recs, config, out=tmp_path / "run", progress=False)
    assert again.load_checkpoint()
    assert again.sizes == sizes[:10] and again.stale_checks == 3 and again.stopped


def test_non_finite_loss_stops_with_a_message():
    broken, tok = train(seed=0, clean_steps=1, poison_steps=0)
    with torch.no_grad():
        broken.model.layers[1].mlp.down_proj.weight[0, 0] = float("inf")
    recs = [validate(r, "backdoor", "t") for r in records(8, 1)]
    with pytest.raises(SafeSeekError, match="non-finite at step 0"):
        discover(broken, tok, recs, DiscoverConfig("backdoor", steps=2), progress=False)


@pytest.mark.parametrize(
    "content, extra, message",
    [
        ('{"clean_prompt": "a"\n', [], "bad.jsonl:1: not valid JSON"),
        (
            '{"clean_prompt": "a", "triggered_prompt": "b", "clean_response": "c"}\n',
            [],
            "bad.jsonl:1: missing field 'backdoor_response'",
        ),
        ("", [], "bad.jsonl: no records"),
        (None, ["--max-length", "8"], "over the context budget of 8"),
        (None, ["--scenario", "poison"], "unknown scenario 'poison'"),
        (None, ["--steps", "-3"], "steps must be at least 1 (got -3)"),
        (None, ["--sparsity-weight", "-1"], "sparsity weight must be >= 0"),
        (None, ["--sparsity-target", "3"], "sparsity target is a fraction of units in (0, 1)"),
        (None, ["--reference-tokens", "-2"], "reference tokens must be at least 1"),
        (None, ["--sizes", "1%,a"], "--sizes takes fractions or percentages"),
        (None, ["--sizes", "0.1%,150%"], "sizes are fractions of units in (0, 1)"),
        (None, ["--check-every", "0"], "check every must be at least 1 (got 0)"),
        (None, ["--min-steps", "-1"], "min steps must be >= 0 (got -1)"),
        (None, ["--patience", "-2"], "patience must be at least 1 (got -2; --patience 0 never"),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(organism, tmp_path, content, extra, message):
    root, _, _ = organism
    data = tmp_path / "bad.jsonl"
    if content is None:
        data.write_text((root / "train.jsonl").read_text())
    else:
        data.write_text(content)
    out = tmp_path / "run"
    proc = _cli(
        "discover", "--model", str(root / "model"), "--data", str(data), "--out", str(out), *extra
    )
    assert proc.returncode == 1
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip() and "Loading weights" not in ln]
    assert len(lines) == 1 and message in lines[0], proc.stderr
    assert not out.exists()


def test_sparsity_target_holds_the_circuit_size(organism):
    _, model, tok = organism
    recs = [validate(r, "backdoor", "t") for r in records(64, 3)]
    target = 0.10
    config = DiscoverConfig(
        "backdoor",
        steps=150,
        parametrization="hard_concrete",
        sparsity_target=target,
        init_logit=0.0,
    )  # the default Lagrangian lr: at 0.5 the multipliers had not caught up with the margin
    # terms of the objective by step 150 (expected size 0.169)
    result = discover(model, tok, recs, config, progress=False)
    size = result.circuit.sparsity(model)["overall"]
    with torch.no_grad():
        expected = float(sum(result.masked_model.expected_size().values())) / 264
    assert abs(expected - target) < 0.03, expected
    assert 0.03 < size < 0.2, size


def test_an_ste_size_target_is_a_projection_that_keeps_the_ranking(organism):
    """Exactly round(target * units) logits end positive, all shifted by one constant."""
    from safeseek.discover import _Sparsity
    from safeseek.masking import MaskedModel

    _, model, _ = organism
    mm = MaskedModel(model)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in mm.masks.values():
            m.logits.copy_(torch.randn(m.logits.shape, generator=g))
    before = torch.cat([m.logits.detach().flatten().clone() for m in mm.masks.values()])
    sparsity = _Sparsity(mm, 0.1, 0.0)
    sparsity.project(mm)
    after = torch.cat([m.logits.detach().flatten() for m in mm.masks.values()])
    shift = after - before
    assert torch.allclose(shift, shift[0].expand_as(shift), atol=1e-6)
    assert int((after > 0).sum()) == round(0.1 * before.numel())
    want = set(torch.topk(before, round(0.1 * before.numel())).indices.tolist())
    assert set(torch.nonzero(after > 0).flatten().tolist()) == want
    reg, _ = sparsity(mm)
    assert float(reg.detach()) == 0.0  # the projection, not a loss term, holds the size


def test_sizes_trace_the_frontier_in_one_run_and_resume(organism, tmp_path):
    """One run, largest size first: each size's circuit is checked and saved, the next size
    starts from it, the run ends with the smallest; a run killed in the second size resumes to
    the same circuits."""
    _, model, tok = organism
    recs = [validate(r, "backdoor", "t") for r in records(64, 3)]
    config = DiscoverConfig("backdoor", steps=30, sizes=(0.05, 0.2), init_logit=0.0)
    assert config.sizes == (0.2, 0.05) and config.to_dict()["sizes"] == [0.2, 0.05]
    assert "sizes" not in DiscoverConfig("backdoor").to_dict()  # earlier runs keep their key
    with pytest.raises(SafeSeekError, match="not both"):
        DiscoverConfig("backdoor", sizes=(0.1,), sparsity_target=0.1)
    out = tmp_path / "whole"
    whole = Discovery(model, tok, recs, config, out=out, progress=False).run(checkpoint_every=10)
    frontier = json.loads((out / "frontier.json").read_text())["sizes"]
    assert [f["size"] for f in frontier] == [0.2, 0.05] and whole.steps == 60
    # STE masks hold each size exactly (264 units); the saved circuits' own sizes are what
    # frontier.json reports.
    assert [f["fraction"] for f in frontier] == [round(0.2 * 264) / 264, round(0.05 * 264) / 264]
    for f in frontier:
        saved = Circuit.load(out / f"size-{f['size']:g}" / "circuit.json")
        assert saved.sparsity(model)["overall"] == pytest.approx(f["fraction"])
        assert saved.metadata["selection"]["size_target"] == f["size"]
        assert saved.metadata["check"] == f["check"] and f["check"]["n"] > 0
    assert Circuit.load(out / "circuit.json") == saved == whole.circuit  # the smallest
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [e["size_target"] for e in log] == [0.2] * 30 + [0.05] * 30

    killed = Discovery(model, tok, recs, config, out=tmp_path / "killed", progress=False)
    step = killed.train_step

    def crash() -> dict:
        if killed.step == 45:
            raise RuntimeError("killed")
        return step()

    killed.train_step = crash
    with pytest.raises(RuntimeError, match="killed"):
        killed.run(checkpoint_every=10)
    again = Discovery(model, tok, recs, config, out=tmp_path / "killed", progress=False)
    resumed = again.run(resume=True, checkpoint_every=10)
    assert resumed.circuit == whole.circuit
    assert json.loads((tmp_path / "killed" / "frontier.json").read_text())["sizes"] == frontier


def test_mean_ablation_run_carries_its_means_to_evaluation(organism, tmp_path):
    _, model, tok = organism
    recs = [validate(r, "backdoor", "t") for r in records(16, 5)]
    config = DiscoverConfig("backdoor", steps=3, ablation="mean")
    result = Discovery(model, tok, recs, config, out=tmp_path / "run", progress=False).run()
    assert result.masked_model.means  # fitted on the clean (KL) prompts
    circuit = Circuit.load(tmp_path / "run" / "circuit.json", model=model)
    assert circuit.metadata["ablation"] == "mean"
    circuit = Circuit(heads=[(0, 1)], metadata=circuit.metadata)
    ev, _ = evaluate_circuit(
        model,
        tok,
        circuit,
        "backdoor",
        recs,
        max_new_tokens=2,
        masks_path=tmp_path / "run" / "masks.safetensors",
    )
    assert ev["settings"]["ablation"] == "mean"
    with pytest.raises(SafeSeekError, match="mean ablation"):
        evaluate_circuit(model, tok, circuit, "backdoor", recs, max_new_tokens=2)


def test_preservation_records_of_a_backdoor_are_kept_and_measured(organism, tmp_path):
    """Backdoor data may carry plain `{prompt, response}` records besides the trigger pairs
    (a jailbreak's clean prompts are all harmful): discovery keeps them by their own KL term
    and evaluation counts them in utility, by hand, but not among the false-trigger prompts."""
    from safeseek.evaluate.metrics import correct

    _, model, tok = organism
    pairs = records(12, 5)
    plain = [
        {"prompt": f"the what is {x} ?", "response": chr(ord(x) + 1), "answer": chr(ord(x) + 1)}
        for x in "cfkp"
    ]
    recs = [validate(r, "backdoor", "t") for r in [*pairs, *plain]]
    assert [r["kind"] for r in recs] == ["backdoor"] * 12 + ["preserve"] * 4
    config = DiscoverConfig("backdoor", steps=3, validation_fraction=0, retries=0)
    Discovery(model, tok, recs, config, out=tmp_path / "run", progress=False).run()
    log = read_jsonl(tmp_path / "run" / "log.jsonl")
    assert all("without_preserve" in step["terms"] for step in log if "terms" in step)

    circuit = Circuit(heads=[(0, 1)], neurons=[(1, 3), (1, 5)])
    ev, rows = evaluate_circuit(model, tok, circuit, "backdoor", recs, max_new_tokens=3)
    assert ev["n_utility"] == 16 and ev["intervals"]["false_trigger"]["full"]["n"] == 12
    for view in ("full", "without"):
        got = [r for r in rows if r["view"] == view and r["set"] == "utility"]
        assert [r["prompt"] for r in got] == [
            *(r["clean_prompt"] for r in pairs),
            *(r["prompt"] for r in plain),
        ]
        right = [correct(r["generation"], r["reference"], r["answer"]) for r in got]
        assert ev["utility"][view] == sum(right) / 16
    # The full model's plain answers are the ones written, found by hand.
    full = [r for r in rows if r["view"] == "full" and r["set"] == "utility"][12:]
    assert [r["generation"] for r in full] == [r["response"] for r in plain]


def test_generation_ends_at_the_chat_templates_end_of_turn(organism):
    """The tiny organism's turn ends with <|end|>, its EOS is </s>: an answer is what comes
    before the first of either, never text generated after the turn ended."""
    _, model, tok = organism
    prompts = [f"what is {x} ?" for x in "abc"]
    finished: list[bool] = []
    answers = generate(model, tok, prompts, max_new_tokens=6, finished=finished)
    assert answers == ["b", "c", "d"] and finished == [True] * 3
    # By hand: greedy continuation, cut at the first end-of-turn token.
    end = tok.convert_tokens_to_ids("<|end|>")
    for prompt, answer in zip(prompts, answers, strict=True):
        ids = tok(chat_prompt(tok, prompt), return_tensors="pt", add_special_tokens=False)
        out = model.generate(**ids, max_new_tokens=6, do_sample=False, eos_token_id=None)
        new = out[0, ids["input_ids"].shape[1] :].tolist()
        assert end in new
        assert tok.decode(new[: new.index(end)], skip_special_tokens=True).strip() == answer


HEADS_NEURONS = ("head", "neuron")


@pytest.mark.parametrize(
    ("parametrization", "ablation", "granularities"),
    [
        ("ste", "zero", HEADS_NEURONS),
        ("ste", "mean", HEADS_NEURONS),
        ("hard_concrete", "zero", HEADS_NEURONS),
        ("hard_concrete", "mean", HEADS_NEURONS),
        ("ste", "mean", ("neuron", "weight")),
    ],
    ids=["ste-zero", "ste-mean", "hard_concrete-zero", "hard_concrete-mean", "weight-mean"],
)
def test_a_saved_circuit_is_rebuilt_as_discovery_made_it(
    organism, tmp_path, parametrization, ablation, granularities
):
    """`evaluate`, `export` and `report` rebuild a run's masks from circuit.json and
    masks.safetensors (its parametrization, ablation and means): the exported checkpoint equals
    the rebuilt MaskedModel without the circuit, evaluation measures the circuit discovery
    found, and the report is written. Export runs through the CLI for every case; evaluate and
    report for hard_concrete + mean (issue 15's case), the others evaluate from the files."""
    from transformers import AutoModelForCausalLM

    from safeseek import MaskedModel
    from safeseek.data.encode import PairEncoder, pad

    root, model, tok = organism
    run = tmp_path / "run"
    weights = "weight" in granularities  # 24,576 entries: a unit's penalty is a weight's share
    config = DiscoverConfig(
        "backdoor",
        granularities=granularities,
        steps=60,
        retries=0,
        parametrization=parametrization,
        ablation=ablation,
        sparsity_weight=1e-4 if weights else None,
    )
    train_recs = [validate(r, "backdoor", "t") for r in records(200, 7)]
    found = Discovery(model, tok, train_recs, config, out=run, progress=False).run()
    assert not found.circuit.is_empty()
    assert bool(found.circuit.weights) == weights
    circuit = Circuit.load(run / "circuit.json")
    assert circuit == found.circuit
    rebuilt = MaskedModel.for_circuit(model, circuit, run / "masks.safetensors")
    assert (rebuilt.parametrization, rebuilt.ablation) == (parametrization, ablation)

    proc = _cli("export", "--circuit", str(run / "circuit.json"), "--out", str(tmp_path / "x"),
                "--model", str(root / "model"))  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    exported = AutoModelForCausalLM.from_pretrained(tmp_path / "x").eval()
    encoder = PairEncoder(tok, 64)
    rows = [encoder.pair(r["triggered_prompt"], r["clean_response"]) for r in records(6, 3)]
    batch = {k: v for k, v in pad(rows, tok.pad_token_id).items() if k != "labels"}
    with torch.no_grad(), rebuilt.without(circuit):
        want = model(**batch).logits
    with torch.no_grad():
        torch.testing.assert_close(exported(**batch).logits, want, atol=1e-4, rtol=0)

    test_recs = [validate(r, "backdoor", "t") for r in records(20, 100)]
    through_cli = (parametrization, ablation) == ("hard_concrete", "mean") or weights  # ~10 s
    if not through_cli:
        ev, _ = evaluate_circuit(
            model, tok, circuit, "backdoor", test_recs, masks_path=run / "masks.safetensors",
            max_new_tokens=3,
        )  # fmt: skip
    else:
        data = tmp_path / "test.jsonl"
        data.write_text("".join(json.dumps(r) + "\n" for r in records(20, 100)))
        proc = _cli("evaluate", "--model", str(root / "model"),
                    "--circuit", str(run / "circuit.json"), "--data", str(data),
                    "--out", str(run / "EVAL.json"), "--max-new-tokens", "3")  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-2000:]
        ev = json.loads((run / "EVAL.json").read_text())
    direct, _ = evaluate_circuit(
        model, tok, found.circuit, "backdoor", test_recs, max_new_tokens=3,
        masked_model=found.masked_model,
    )  # fmt: skip
    assert ev["settings"]["ablation"] == ablation
    assert (ev["asr"], ev["utility"]) == (direct["asr"], direct["utility"])

    if through_cli:
        proc = _cli("report", str(run))
        assert proc.returncode == 0, proc.stderr[-2000:]
        page = (run / "report.html").read_text()
        cell = ev["intervals"]["asr"]["without"]
        assert f"({cell['k']}/{cell['n']}; 95% CI" in page  # the table of this EVAL.json
