"""Generation and metrics under the views of a MaskedModel."""

from safeseek.evaluate.generation import chat_prompt, generate

__all__ = ["chat_prompt", "generate"]
