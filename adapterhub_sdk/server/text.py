"""Prompt and stream text: the chat prompt of a conversation, stop-sequence cuts (``cut``: the
one ``Deployment.generate`` applies), and how much of a streamed tail to hold back."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..generation import cut_at_stop as cut


def chat_prompt(tokenizer: Any, messages: Sequence[dict[str, str]]) -> tuple[str, bool]:
    """The prompt for chat ``messages`` ({"role", "content"}) and whether the tokenizer should
    add its special tokens: the tokenizer's chat template when it has one (which adds them
    itself), else ``"role: content\\n"`` per message followed by ``"assistant:"``."""
    if tokenizer is not None and getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template(list(messages), add_generation_prompt=True, tokenize=False)
        return str(text), False
    return "".join(f"{m['role']}: {m['content']}\n" for m in messages) + "assistant:", True


def held_back(text: str, stop: Sequence[str]) -> int:
    """How many trailing characters may still become a stop sequence or a whole character."""
    hold = 0
    for s in stop:
        for k in range(min(len(s) - 1, len(text)), hold, -1):
            if text.endswith(s[:k]):
                hold = k
                break
    while hold < len(text) and text[len(text) - hold - 1] == "\ufffd":  # an unfinished UTF-8 sequence
        hold += 1
    return hold


__all__ = ["chat_prompt", "cut", "held_back"]
