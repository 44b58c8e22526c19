"""Reports: figures and a self-contained HTML page from a real evaluation, rendered by headless
Chromium (Debian's `chromium`; .ci/run installs it and makes its absence a failure)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest
from conftest import build, tiny_tokenizer
from test_cli import run
from tiny_backdoor import records

from safeseek import Circuit, MaskedModel
from safeseek.data import write_jsonl
from safeseek.evaluate.check import judge
from safeseek.evaluate.run import evaluate_circuit
from safeseek.fileio import write_json
from safeseek.report.html import samples
from safeseek.settings import DiscoverConfig


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A discovery-run-shaped directory with a real EVAL.json from a tiny model."""
    root = tmp_path_factory.mktemp("run")
    model, tok = build("llama"), tiny_tokenizer()
    mm = MaskedModel(model)
    circuit = Circuit(heads=[(0, 1), (1, 2), (1, 3)], neurons=[(0, 4), (1, 40)], metadata={
        **mm.metadata(), "settings": {"scenario": "backdoor", "steps": 5}
    })  # fmt: skip
    recs = [{**r, "clean_prompt": r["clean_prompt"] + " <b>"} for r in records(5, seed=1)]
    ev, rows = evaluate_circuit(model, tok, circuit, "backdoor", recs, max_new_tokens=3)
    circuit.metadata["check"] = judge(ev, DiscoverConfig("backdoor"))
    circuit.save(root / "circuit.json")
    write_json(root / "EVAL.json", ev)
    write_jsonl(root / "EVAL.generations.jsonl", rows)
    proc = run("report", str(root))
    assert proc.returncode == 0, proc.stderr
    return root


def test_report_has_tables_figures_and_escapes_text(run_dir):
    page = (run_dir / "report.html").read_text()
    assert page.count("<img") == 3 and page.count("data:image/png;base64,") == 3
    for name in ("asr-by-view.png", "run0-heads.png", "run0-neurons.png"):
        assert (run_dir / name).stat().st_size > 1000, name
    assert "attack success" in page and "utility retention" in page
    assert "3 heads + 2 neurons" in page
    # Every rate with its count and 95% interval, and discovery's own check in one line.
    k, n = ev_count(run_dir, "asr", "full")
    assert f"({k}/{n}; 95% CI" in page and "exact target" in page
    forced = json.loads((run_dir / "EVAL.json").read_text())["target_probability"]["full"]
    assert f"{100 * forced['triggered']:.1f}% / {100 * forced['clean']:.1f}%" in page
    check = json.loads((run_dir / "circuit.json").read_text())["metadata"]["check"]
    assert "Discovery&#x27;s check:" in page or "Discovery's check:" in page
    assert ("check passed" if check["passed"] else "CHECK FAILED") in page
    assert "&lt;b&gt;" in page and "<b>\n" not in page  # prompt text is escaped
    assert "<script" not in page and "http" not in page  # self-contained, offline


def ev_count(run_dir, metric: str, view: str) -> tuple[int, int]:
    cell = json.loads((run_dir / "EVAL.json").read_text())["intervals"][metric][view]
    return cell["k"], cell["n"]


def test_samples_line_up_clean_and_triggered_rows(run_dir):
    rows = [json.loads(x) for x in (run_dir / "EVAL.generations.jsonl").read_text().splitlines()]
    table = samples(rows, "backdoor", k=2)
    assert len(table) == 2
    first = table[0]
    attack = next(r for r in rows if r["set"] == "attack" and r["i"] == 0 and r["view"] == "full")
    clean = next(r for r in rows if r["set"] == "utility" and r["i"] == 0 and r["view"] == "full")
    assert first["attack prompt"] == attack["prompt"] and first["clean prompt"] == clean["prompt"]
    assert "attack → circuit ablated" in first and "attack → circuit only" in first


def chromium() -> str | None:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None and os.environ.get("SAFESEEK_REQUIRE_BROWSER"):
        pytest.fail("chromium is not installed (.ci/run installs Debian's chromium package)")
    return path


def test_report_renders_in_headless_chromium(run_dir, tmp_path):
    browser = chromium()
    if browser is None:
        pytest.skip("chromium not installed (apt-get install chromium)")
    flags = [
        "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        f"--user-data-dir={tmp_path / 'profile'}",
    ]  # fmt: skip
    url = (run_dir / "report.html").as_uri()
    shot = tmp_path / "shot.png"
    subprocess.run(
        [browser, *flags, f"--screenshot={shot}", "--window-size=1200,2600", url],
        capture_output=True, timeout=120, check=True,
    )  # fmt: skip
    dom = subprocess.run(
        [browser, *flags, "--dump-dom", url], capture_output=True, text=True, timeout=120
    ).stdout
    assert dom.count("<table") >= 3 and dom.count("<img") == 3
    pixels = (matplotlib.image.imread(shot)[..., :3] * 255).round().astype(int)

    def share(rgb: tuple[int, int, int]) -> float:
        return float(np.mean(np.abs(pixels - np.array(rgb)).sum(-1) <= 12))

    assert share((103, 0, 13)) > 1e-4  # the heatmap's circuit cells (Reds at 1.0)
    assert share((178, 24, 43)) > 1e-4  # the neuron bars


def test_files_with_the_old_view_names_still_report(run_dir, tmp_path):
    """EVAL.json, generations and circuit checks written before the views were named full /
    without / only (without_circuit, circuit_only) give the same tables."""
    old = {"without": "without_circuit", "only": "circuit_only"}

    def rename(obj):
        if isinstance(obj, list):
            return [rename(x) for x in obj]
        if not isinstance(obj, dict):
            return obj
        out = {old.get(k, k): rename(v) for k, v in obj.items()}
        return {**out, "view": old.get(out["view"], out["view"])} if "view" in out else out

    for name in ("EVAL.json", "circuit.json"):
        (tmp_path / name).write_text(json.dumps(rename(json.loads((run_dir / name).read_text()))))
    rows = [json.loads(x) for x in (run_dir / "EVAL.generations.jsonl").read_text().splitlines()]
    write_jsonl(tmp_path / "EVAL.generations.jsonl", rename(rows))
    assert "without_circuit" in (tmp_path / "EVAL.json").read_text()
    proc = run("report", str(tmp_path))
    assert proc.returncode == 0, proc.stderr

    def tables(run: Path) -> list[str]:
        page = (run / "report.html").read_text().replace(run.name, "RUN")
        return [t.split("</table>")[0] for t in page.split("<table>")[1:]]

    assert tables(tmp_path) == tables(run_dir)
