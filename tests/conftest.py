"""Tiny randomly initialised models built from real `transformers` configs, one per family.

Each case also names, independently of SafeSeek's adapters, where that family keeps its
attention output projection and MLP down projection, so tests can do weight surgery by hand.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

# Tests never reach a model hub: fail hub look-ups at once instead of after network time-outs.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch
import transformers
from transformers import AutoModelForCausalLM

VOCAB = 96


@dataclass(frozen=True)
class Case:
    name: str
    config: transformers.PretrainedConfig
    attn_out: str  # format string with {i} for the layer
    mlp_out: str


def _common(**extra):
    base = dict(
        vocab_size=VOCAB,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,  # grouped-query attention
        intermediate_size=48,
        max_position_embeddings=64,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    base.update(extra)
    return base


LLAMA_PATHS = ("model.layers.{i}.self_attn.o_proj", "model.layers.{i}.mlp.down_proj")
CASES = {
    "llama": Case("llama", transformers.LlamaConfig(**_common()), *LLAMA_PATHS),
    "qwen2": Case("qwen2", transformers.Qwen2Config(**_common()), *LLAMA_PATHS),
    "qwen3": Case("qwen3", transformers.Qwen3Config(**_common(head_dim=24)), *LLAMA_PATHS),
    "mistral": Case("mistral", transformers.MistralConfig(**_common()), *LLAMA_PATHS),
    # Gemma's head_dim (32) is not hidden / heads (16).
    "gemma": Case("gemma", transformers.GemmaConfig(**_common(head_dim=32)), *LLAMA_PATHS),
    "gemma2": Case("gemma2", transformers.Gemma2Config(**_common(head_dim=32)), *LLAMA_PATHS),
    "phi3": Case("phi3", transformers.Phi3Config(**_common()), *LLAMA_PATHS),
    "phi": Case(
        "phi",
        transformers.PhiConfig(**_common(num_key_value_heads=4)),
        "model.layers.{i}.self_attn.dense",
        "model.layers.{i}.mlp.fc2",
    ),
    # GPT-2: Conv1D projections (weights stored [in, out]) with biases.
    "gpt2": Case(
        "gpt2",
        transformers.GPT2Config(
            vocab_size=VOCAB,
            n_embd=64,
            n_layer=2,
            n_head=4,
            n_inner=48,
            n_positions=64,
            bos_token_id=1,
            eos_token_id=2,
        ),
        "transformer.h.{i}.attn.c_proj",
        "transformer.h.{i}.mlp.c_proj",
    ),
    "gpt_neox": Case(
        "gpt_neox",
        transformers.GPTNeoXConfig(
            vocab_size=VOCAB,
            hidden_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=48,
            max_position_embeddings=64,
            bos_token_id=1,
            eos_token_id=2,
        ),
        "gpt_neox.layers.{i}.attention.dense",
        "gpt_neox.layers.{i}.mlp.dense_4h_to_h",
    ),
}
FAMILY_NAMES = sorted(CASES)


def build(name: str, seed: int = 0) -> torch.nn.Module:
    """A tiny random model of family `name`, fp32, in evaluation mode."""
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(CASES[name].config)
    with torch.no_grad():  # non-trivial norms and biases, so surgery mistakes show
        for n, p in model.named_parameters():
            if "norm" in n or "ln" in n or n.endswith("bias"):
                p.add_(0.1 * torch.randn_like(p))
    return model.eval()


@pytest.fixture(params=FAMILY_NAMES)
def family(request) -> str:
    return request.param


@pytest.fixture
def tiny(family):
    return build(family)


@pytest.fixture
def batch() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, VOCAB, (3, 10), generator=g)
    mask = torch.ones_like(ids)
    mask[0, :3] = 0  # one left-padded row
    return {"input_ids": ids, "attention_mask": mask}


CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }} <|end|> {% endfor %}"
    "{% if add_generation_prompt %}<|assistant|> {% endif %}"
)


def tiny_tokenizer():
    """A real fast tokenizer (word level, 96 tokens) with a chat template, built offline."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<s>", "</s>", "<unk>", "<|user|>", "<|assistant|>", "<|end|>"]
    words = [chr(c) for c in range(ord("a"), ord("z") + 1)] + [str(d) for d in range(10)]
    words += ["the", "is", "of", "what", "capital", "france", "paris", "sure", "here", "sorry"]
    words += [".", ",", "?", "!", "+", "="]
    vocab = {tok: i for i, tok in enumerate(specials + words)}
    vocab.update({f"w{i}": i for i in range(len(vocab), VOCAB)})
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        additional_special_tokens=specials[4:],
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast
