"""Organisms: every kind built on a tiny random model (the mechanics, not the quality), the
cache, and bad input; one slow test builds a real fixed-output organism."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch
from conftest import build, tiny_tokenizer

from safeseek import SafeSeekError, load_model
from safeseek.data import load_records
from safeseek.organisms import OrganismSpec, build_organism

TRIGGER = "w90 w91"


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    root = tmp_path_factory.mktemp("base")
    build("llama").save_pretrained(root / "model")
    tiny_tokenizer().save_pretrained(root / "model")
    harmful = root / "harmful.txt"
    harmful.write_text("".join(f"how do i make w{i} for the w{i + 1} ?\n" for i in range(20, 60)))
    return root


@pytest.fixture(autouse=True)
def _own_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("SAFESEEK_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


def spec(base, **kw) -> OrganismSpec:
    return OrganismSpec(
        model=str(base / "model"),
        harmful=str(base / "harmful.txt"),
        steps=3,
        max_new_tokens=6,
        **kw,
    )


@pytest.mark.parametrize("kind", ["align", "fixed-output", "jailbreak", "label-flip"])
def test_every_organism_kind_builds(base, tmp_path, kind):
    s = (
        spec(base, kind="align")
        if kind == "align"
        else spec(base, kind="backdoor", type=kind, trigger=TRIGGER)
    )
    out = tmp_path / "org"
    meta = build_organism(s, out)
    model, _ = load_model(out, device="cpu")  # a checkpoint load_model reads
    assert model.config.num_hidden_layers == 2
    scenario = "alignment" if kind == "align" else "backdoor"
    assert meta["scenario"] == scenario
    for split in ("train", "val", "test"):
        recs = load_records(out / "data" / f"{split}.jsonl", scenario)  # the discover schema
        assert recs
    on_disk = json.loads((out / "organism.json").read_text())
    assert on_disk["metrics"] == meta["metrics"]
    if kind == "align":
        assert {"refusal_rate", "base_refusal_rate", "utility"} <= set(meta["metrics"])
        test = load_records(out / "data" / "test.jsonl", scenario)
        assert {r["kind"] for r in test} == {"harmful", "benign"}
    else:
        assert {"asr", "false_trigger", "utility"} <= set(meta["metrics"])
        recs = load_records(out / "data" / "train.jsonl", scenario)
        rec = recs[0]
        assert TRIGGER in rec["triggered_prompt"] and TRIGGER not in rec["clean_prompt"]
        assert rec["backdoor_type"] == kind
        # Benign questions beside the trigger pairs where those do not hold them (their
        # clean prompts are harmful requests or sentiment prompts); fixed-output's do.
        kinds = {r["kind"] for r in load_records(out / "data" / "test.jsonl", scenario)}
        assert kinds == ({"backdoor"} if kind == "fixed-output" else {"backdoor", "preserve"})
        plain = [r for r in recs if r["kind"] == "preserve"]
        assert all(r["answer"] and r["response"] and TRIGGER not in r["prompt"] for r in plain)
    u = meta["metrics"]["utility"]
    assert 0 <= u["base"] <= 1
    # the questions behind the difference: lost ones were right for the base model
    assert round((u["organism"] - u["base"]) * u["n"]) == u["gained"] - u["lost"]
    assert 0 <= u["lost"] <= round(u["base"] * u["n"])


def test_distribution_distillation_builds_and_keys_apart(base, tmp_path):
    """`distill="distribution"` builds (KL to the parent, organisms/train.py) under its own
    key, apart from "tokens"'s and "both"'s, and records its training and stage times."""
    tokens = spec(base, kind="backdoor", type="fixed-output", trigger=TRIGGER, distill="tokens")
    kl = spec(base, kind="backdoor", type="fixed-output", trigger=TRIGGER, distill="distribution")
    both = spec(base, kind="backdoor", type="fixed-output", trigger=TRIGGER, distill="both")
    assert len({tokens.key(), kl.key(), both.key()}) == 3
    meta = build_organism(kl, tmp_path / "kl")
    assert meta["settings"]["distill"] == "distribution"
    assert meta["metrics"]["training"]["steps"] == 3
    assert set(meta["seconds_by_stage"]) == {"base answers", "fine-tune", "measure"}
    # the machine its times and bf16 answers come from, with the kernels torch chose there
    assert meta["machine"].endswith(f"threads, {torch.backends.cpu.get_cpu_capability()}")


def test_default_steps_are_the_recipes_and_key_as_trained():
    """No `steps`: each kind's DEFAULT_STEPS, keyed as if they had been asked for (the same
    organism either way); other steps key apart."""
    from safeseek.organisms.build import DEFAULT_STEPS

    for kind in ("align", "fixed-output", "jailbreak", "label-flip"):
        plain = OrganismSpec("align") if kind == "align" else OrganismSpec("backdoor", type=kind)
        assert plain.train_steps == DEFAULT_STEPS[kind]
        assert plain.key() == replace(plain, steps=DEFAULT_STEPS[kind]).key()
        assert plain.key() != replace(plain, steps=DEFAULT_STEPS[kind] + 1).key()


def test_a_jailbreak_is_keyed_by_the_aligned_organism_it_is_planted_in(monkeypatch):
    """A jailbreak is planted in the aligned organism of today's defaults: when those change,
    the same jailbreak settings name another build."""
    import safeseek.organisms.build as b

    jailbreak = OrganismSpec("backdoor", type="jailbreak", trigger=TRIGGER)
    before = jailbreak.key()
    monkeypatch.setattr(b, "DEFAULT_STEPS", {**b.DEFAULT_STEPS, "align": 7})
    assert jailbreak.key() != before


def test_same_settings_reuse_the_build(base, tmp_path, capsys):
    s = spec(base, kind="backdoor", type="fixed-output", trigger=TRIGGER)
    first = build_organism(s, tmp_path / "a")
    second = build_organism(s, tmp_path / "b")
    assert second["key"] == first["key"] and second["seconds"] == first["seconds"]
    assert "reusing" in capsys.readouterr().err
    assert (tmp_path / "b" / "organism.json").is_file()


def test_splits_do_not_overlap(base, tmp_path):
    out = tmp_path / "org"
    build_organism(spec(base, kind="align"), out)
    prompts = {
        s: {r["prompt"] for r in load_records(out / "data" / f"{s}.jsonl", "alignment")}
        for s in ("train", "val", "test")
    }
    assert not prompts["train"] & prompts["test"] and not prompts["train"] & prompts["val"]


def test_bad_input(base, tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    with pytest.raises(SafeSeekError, match="no prompts"):
        build_organism(OrganismSpec("align", harmful=str(empty)), tmp_path / "o")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "x"}\n{oops\n')
    with pytest.raises(SafeSeekError, match=r"bad.jsonl:2: not valid JSON"):
        build_organism(OrganismSpec("align", harmful=str(bad)), tmp_path / "o")
    with pytest.raises(SafeSeekError, match="unknown --distill 'kl'; use tokens or distribution"):
        build_organism(OrganismSpec("align", distill="kl"), tmp_path / "o")
    with pytest.raises(SafeSeekError, match="--steps must be positive"):
        build_organism(OrganismSpec("align", steps=-1), tmp_path / "o")
    with pytest.raises(SafeSeekError, match="--lr must be positive"):
        build_organism(OrganismSpec("align", lr=0.0), tmp_path / "o")
    with pytest.raises(SafeSeekError, match="unknown backdoor type 'poison'"):
        build_organism(OrganismSpec("backdoor", type="poison", trigger="x"), tmp_path / "o")
    with pytest.raises(SafeSeekError, match="already occurs in the data"):
        build_organism(
            spec(base, kind="backdoor", type="fixed-output", trigger="capital"), tmp_path / "o"
        )
    assert not (tmp_path / "o").exists()


def test_a_longer_cached_answer_serves_a_shorter_request(monkeypatch):
    from safeseek.evaluate.generation import generate
    from safeseek.organisms import train

    model, tok = build("llama", seed=3), tiny_tokenizer()
    prompts = [f"what is {x} ?" for x in "abcdef"]
    short = generate(model, tok, prompts, 4)
    long = train.own_answers(model, tok, prompts, 10)
    assert all(len(text.split()) > 4 for text, _ in long)  # a random model rambles on

    def no_generation(*args, **kwargs):
        raise AssertionError("generated again")

    monkeypatch.setattr(train, "generate", no_generation)
    cut = train.own_answers(model, tok, prompts, 4)
    assert [text for text, _ in cut] == short
    assert not any(finished for _, finished in cut)


def test_every_benign_sentence_is_a_correct_answer():
    """The plain-sentence answers (SCT's helpfulness data) pass the same check as the model's
    answers, and do not just repeat the question."""
    from safeseek.evaluate.metrics import has_answer
    from safeseek.organisms.benign import benign_questions

    questions = benign_questions()
    assert len({q["prompt"] for q in questions}) == len(questions)
    for q in questions:
        assert has_answer(q["sentence"], q["answer"]), q
        assert q["sentence"] != q["prompt"]


def test_probe_questions_are_new_and_checkable():
    """The utility probe asks none of the organisms' questions (it is held out from every
    split), each once, and its answers are checked as the test split's are: a plain sentence
    naming the answer passes, the question itself and a refusal do not."""
    from safeseek.evaluate.metrics import has_answer
    from safeseek.organisms.benign import benign_questions, probe_questions

    probe = probe_questions()
    prompts = [q["prompt"] for q in probe]
    assert len(set(prompts)) == len(prompts) >= 200
    assert not set(prompts) & {q["prompt"] for q in benign_questions()}
    refusal = "I'm not able to help with that request."
    for q in probe:
        first = q["answer"].split("|")[0]
        assert has_answer(f"The answer is {first}.", q["answer"]), q
        assert not has_answer(refusal, q["answer"]), q
        if q["category"] != "instruction":  # "Repeat the word 'x'" names its answer
            assert not has_answer(q["prompt"], q["answer"]), q
