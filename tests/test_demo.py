"""The demo pipeline end to end on a tiny model: every stage, summary.json, the report, the
export, and a second run served from the cache."""

from __future__ import annotations

import json
import time

import pytest
from conftest import build, tiny_tokenizer
from transformers import AutoModelForCausalLM

from safeseek.demo import cases, run_demo


@pytest.fixture(autouse=True)
def _own_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("SAFESEEK_CACHE", str(tmp_path_factory.getbasetemp() / "demo-cache"))


def test_demo_on_a_tiny_model_then_from_the_cache(tmp_path):
    model_dir = tmp_path / "model"
    build("llama").save_pretrained(model_dir)
    tiny_tokenizer().save_pretrained(model_dir)
    harmful = tmp_path / "harmful.txt"
    harmful.write_text("".join(f"how do i make w{i} for the w{i + 1} ?\n" for i in range(20, 60)))
    tiny_cases = cases(
        discover_steps=3, model=str(model_dir), harmful=str(harmful), steps=2, max_new_tokens=4
    )
    args = dict(eval_records=3, max_new_tokens=3)
    summary = run_demo(tmp_path / "demo", tiny_cases, **args)

    on_disk = json.loads((tmp_path / "demo" / "summary.json").read_text())
    assert on_disk == summary
    assert set(summary["cases"]) == {"backdoor_fixed_output", "backdoor_jailbreak", "alignment"}
    for name, case in summary["cases"].items():
        assert set(case["asr"]) == {"full", "without", "only"}, name
        assert "retention" in case["utility"] and "overall" in case["sparsity"]
        assert set(case["seconds"]) >= {"organism", "discover", "evaluate"}
        assert all(isinstance(t["met"], bool) for t in case["targets"].values())
        assert (tmp_path / "demo" / name / "circuit.json").is_file()
    page = (tmp_path / "demo" / "report.html").read_text()
    assert page.count("<h2") == 4  # the summary and one section per circuit
    exported = AutoModelForCausalLM.from_pretrained(tmp_path / "demo" / "backdoor-free-model")
    assert exported.config.num_hidden_layers == 2

    start = time.perf_counter()
    again = run_demo(tmp_path / "demo2", tiny_cases, **args)
    assert time.perf_counter() - start < 30
    for name, case in again["cases"].items():  # same results, read back from the cache
        assert case["asr"] == summary["cases"][name]["asr"]
        assert case["circuit"] == summary["cases"][name]["circuit"]
