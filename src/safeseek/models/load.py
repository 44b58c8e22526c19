"""`load_model`: a Hugging Face causal LM and its tokenizer from wherever users keep them.

Sources: a local HF directory, a hub id (where a hub is reachable), a `.gguf` file, a PEFT
adapter directory (its base is loaded and the adapter merged), or `"default"` (the embedded
SmolLM2-135M-Instruct). `trust_remote_code` stays off unless asked for.
"""

from __future__ import annotations

import copy
import json
import platform
import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

from safeseek.assets import DEFAULT_MODEL, DEFAULT_MODEL_NAME, cache_dir, default_model_gguf
from safeseek.errors import SafeSeekError
from safeseek.fileio import atomic_path

_DTYPES = {
    "auto": "auto",
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}


def resolve_dtype(dtype: str | torch.dtype) -> str | torch.dtype:
    """`"auto"` (the checkpoint's own dtype), a torch dtype, or one of its usual names."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in _DTYPES:
        raise SafeSeekError(f"unknown dtype {dtype!r}; use one of {', '.join(_DTYPES)}")
    return _DTYPES[dtype]


def fast_dtype(device: str | torch.device | None = None) -> torch.dtype:
    """bfloat16 where the hardware computes in it natively, else float32 (for training loops;
    masks stay fp32 either way)."""
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
    # ATen's own kernels must run bf16 too: with ATEN_CPU_CAPABILITY below AVX512 on a bf16
    # CPU, bf16 attention fails ("pack_vnni2 is only supported when avx512 is supported").
    native = torch.ops.mkldnn._is_mkldnn_bf16_supported()
    return torch.bfloat16 if native and not _x86_below_avx512() else torch.float32


def _x86_below_avx512() -> bool:
    """ATen runs x86 kernels below AVX512 (ATEN_CPU_CAPABILITY=avx2 or default)."""
    x86 = platform.machine().lower() in ("x86_64", "amd64")
    return x86 and torch.backends.cpu.get_cpu_capability() != "AVX512"


def machine() -> str:
    """The processor and the kernels torch picks on it, for measurements that depend on both
    (times; bf16 greedy answers): "AMD EPYC, 2 threads, AVX512"."""
    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name()}, CUDA {torch.version.cuda}"
    info = Path("/proc/cpuinfo")
    names = [
        line.split(":", 1)[1].strip()
        for line in (info.read_text().splitlines() if info.is_file() else [])
        if line.startswith("model name")
    ]
    name = names[0] if names else platform.processor() or platform.machine()
    return f"{name}, {torch.get_num_threads()} threads, {torch.backends.cpu.get_cpu_capability()}"


def in_fast_dtype(model: nn.Module) -> nn.Module:
    """`model` for inference in `fast_dtype`: itself unless it holds fp32 weights on bf16
    hardware, then a bf16 copy (the fp32 original stays exact for training and saving).
    Greedy decoding of SmolLM2-135M ran 2.4x faster in bf16 on a 2-core AVX512-BF16 CPU."""
    first = next(model.parameters())
    fast = fast_dtype(first.device)
    if first.dtype != torch.float32 or fast == torch.float32:
        return model
    return copy.deepcopy(model).to(fast)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _plain(model: PreTrainedModel) -> PreTrainedModel:
    """Forget that weights came from GGUF, so the model saves and behaves like any other."""
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    return model


def load_gguf(path: str | Path, dtype: str | torch.dtype = "auto", **kwargs: Any):
    """De-quantise a `.gguf` file into a plain transformers model (fp32 unless asked)."""
    path = Path(path)
    torch_dtype = resolve_dtype(dtype)
    torch_dtype = torch.float32 if torch_dtype == "auto" else torch_dtype
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name, **kwargs)
    model = AutoModelForCausalLM.from_pretrained(
        path.parent, gguf_file=path.name, dtype=torch_dtype, **kwargs
    )
    return _plain(model), tokenizer


def default_model_dir() -> Path:
    """A plain Hugging Face directory (fp32 safetensors + tokenizer) converted from the GGUF."""
    dest = cache_dir() / "models" / f"{DEFAULT_MODEL_NAME}-{DEFAULT_MODEL.sha256[:12]}"
    if (dest / "config.json").is_file():
        return dest
    gguf = default_model_gguf()
    print("safeseek: converting the embedded model to safetensors (once) ...", file=sys.stderr)
    model, tokenizer = load_gguf(gguf)
    model.config._name_or_path = DEFAULT_MODEL_NAME
    with atomic_path(dest) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        source = {"package": DEFAULT_MODEL.package, "version": DEFAULT_MODEL.version}
        source |= {"file": DEFAULT_MODEL.member, "sha256": DEFAULT_MODEL.sha256}
        (tmp / "safeseek_source.json").write_text(json.dumps(source, indent=2) + "\n")
    return dest


def _looks_local(source: str) -> bool:
    return source.startswith((".", "/", "~")) or source.endswith(".gguf") or "\\" in source


def load_model(
    source: str | Path = "default",
    dtype: str | torch.dtype = "auto",
    adapter: str | Path | None = None,
    device: str | torch.device | None = None,
    trust_remote_code: bool = False,
):
    """Load `(model, tokenizer)` in evaluation mode, with an optional LoRA adapter merged in.

    `dtype="auto"` keeps the checkpoint's dtype (fp32 for GGUF and the embedded default).
    `device` defaults to CUDA when available, else CPU.
    """
    source = str(source)
    kwargs = {"trust_remote_code": trust_remote_code}
    path = Path(source).expanduser()
    if source == "default":
        path, source = default_model_dir(), str(default_model_dir())
    if path.is_file() and path.suffix == ".gguf":
        model, tokenizer = load_gguf(path, dtype, **kwargs)
    elif (
        path.is_dir()
        and (path / "adapter_config.json").is_file()
        and not (path / "config.json").is_file()
    ):
        base = json.loads((path / "adapter_config.json").read_text()).get("base_model_name_or_path")
        if not base:
            raise SafeSeekError(f"{path}/adapter_config.json names no base model")
        if adapter is not None:
            raise SafeSeekError(f"{path} is itself an adapter; pass its base as the model")
        return load_model(base, dtype, adapter=path, device=device, **kwargs)
    elif path.is_dir():
        if not (path / "config.json").is_file():
            raise SafeSeekError(f"{path} has no config.json: not a Hugging Face model directory")
        model, tokenizer = _from_pretrained(source, dtype, kwargs)
    elif path.exists() or _looks_local(source):
        raise SafeSeekError(
            f"{source}: no such model directory or .gguf file"
            if not path.exists()
            else f"{source}: not a model directory or a .gguf file"
        )
    else:
        try:
            model, tokenizer = _from_pretrained(source, dtype, kwargs)
        except SafeSeekError:
            raise
        except Exception as exc:
            raise SafeSeekError(
                f"could not load {source!r}: it is not a local directory or .gguf file, and "
                f"fetching it from the Hugging Face Hub failed ({_first_line(exc)})"
            ) from None
    if adapter is not None:
        model = merge_adapter(model, adapter)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    return model.to(device).eval(), tokenizer


def _from_pretrained(source: str, dtype: str | torch.dtype, kwargs: dict[str, Any]):
    tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
    model = AutoModelForCausalLM.from_pretrained(source, dtype=resolve_dtype(dtype), **kwargs)
    return model, tokenizer


def merge_adapter(model: PreTrainedModel, adapter: str | Path) -> PreTrainedModel:
    """Merge a PEFT (LoRA) adapter into `model` and return the plain merged model."""
    adapter = Path(adapter).expanduser()
    if not (adapter / "adapter_config.json").is_file():
        raise SafeSeekError(f"{adapter}: no adapter_config.json, not a PEFT adapter directory")
    from peft import PeftModel

    try:
        peft_model = PeftModel.from_pretrained(model, str(adapter))
    except Exception as exc:
        raise SafeSeekError(f"{adapter}: could not apply adapter ({_first_line(exc)})") from None
    return peft_model.merge_and_unload()
