"""load_model on every kind of source it accepts, and one-line errors for the rest."""

from __future__ import annotations

import pytest
import torch
from conftest import build, tiny_tokenizer
from helpers import logits

from safeseek import SafeSeekError, load_model
from safeseek.models.load import fast_dtype, in_fast_dtype, merge_adapter


@pytest.fixture
def model_dir(tmp_path):
    model = build("llama")
    path = tmp_path / "model"
    model.save_pretrained(path)
    tiny_tokenizer().save_pretrained(path)
    return path, model


def test_loads_a_hf_directory(model_dir, batch):
    path, original = model_dir
    model, tok = load_model(path, device="cpu")
    assert not model.training
    assert tok.pad_token == "<pad>"
    torch.testing.assert_close(logits(model, batch), logits(original, batch))


def test_dtype_choice(model_dir):
    path, _ = model_dir
    model, _ = load_model(path, dtype="bfloat16", device="cpu")
    assert model.dtype == torch.bfloat16
    with pytest.raises(SafeSeekError, match="unknown dtype"):
        load_model(path, dtype="float8")


def test_no_bf16_where_aten_runs_x86_kernels_below_avx512(monkeypatch):
    """ATEN_CPU_CAPABILITY=avx2 on a bf16 CPU: ATen's bf16 attention would fail there, so the
    fast dtype is fp32; on AVX512 kernels it is what the hardware computes in."""
    monkeypatch.setattr("platform.machine", lambda: "x86_64")
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: True)
    for capability, dtype in (("AVX2", torch.float32), ("DEFAULT", torch.float32)):
        monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda c=capability: c)
        assert fast_dtype("cpu") == dtype
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX512")
    assert fast_dtype("cpu") == torch.bfloat16


def test_in_fast_dtype_is_a_cast_copy(batch):
    """Inference in the fast dtype leaves the fp32 original exact (organisms train and save it)."""
    original = build("gpt2")  # tied embeddings: still tied in the copy
    before = {k: v.clone() for k, v in original.state_dict().items()}
    fast = in_fast_dtype(original)
    assert fast.dtype == fast_dtype()
    if fast_dtype() == torch.float32:
        assert fast is original
    else:
        assert fast is not original and original.dtype == torch.float32
        assert fast.lm_head.weight is fast.transformer.wte.weight
        for k, v in original.state_dict().items():
            assert torch.equal(v, before[k])
            assert torch.equal(fast.state_dict()[k], v.to(fast_dtype()))
        torch.testing.assert_close(
            logits(fast, batch).float(), logits(original, batch), atol=0.1, rtol=0.05
        )
    already = original.to(torch.bfloat16)
    assert in_fast_dtype(already) is already


def _lora_adapter(tmp_path, base_path):
    from peft import LoraConfig, get_peft_model

    base = build("llama")
    peft_model = get_peft_model(
        base, LoraConfig(r=2, target_modules=["q_proj", "down_proj"], init_lora_weights=False)
    )
    peft_model.peft_config["default"].base_model_name_or_path = str(base_path)
    adapter = tmp_path / "adapter"
    peft_model.save_pretrained(adapter)
    return adapter, peft_model


def test_merges_a_lora_adapter(model_dir, tmp_path, batch):
    path, original = model_dir
    adapter, peft_model = _lora_adapter(tmp_path, path)
    want = logits(peft_model, batch)
    assert not torch.allclose(want, logits(original, batch), atol=1e-4)
    merged, _ = load_model(path, adapter=adapter, device="cpu")
    assert type(merged).__name__ == "LlamaForCausalLM"  # plain model, no PEFT wrapper
    torch.testing.assert_close(logits(merged, batch), want, atol=1e-5, rtol=1e-5)
    # An adapter directory on its own names its base.
    from_adapter, _ = load_model(adapter, device="cpu")
    torch.testing.assert_close(logits(from_adapter, batch), want, atol=1e-5, rtol=1e-5)


def test_bad_sources_are_one_line_errors(tmp_path, model_dir):
    cases = {
        str(tmp_path / "missing"): "no such model directory",
        str(tmp_path / "missing.gguf"): "no such model directory or .gguf",
        str(tmp_path): "no config.json",
    }
    for source, message in cases.items():
        with pytest.raises(SafeSeekError, match=message) as err:
            load_model(source)
        assert "\n" not in str(err.value)
    with pytest.raises(SafeSeekError, match="not a PEFT adapter"):
        merge_adapter(build("llama"), tmp_path)


def test_unreachable_hub_id_is_a_clear_error():
    with pytest.raises(SafeSeekError, match="Hugging Face Hub failed") as err:
        load_model("safeseek-test/no-such-model")
    assert "\n" not in str(err.value)
