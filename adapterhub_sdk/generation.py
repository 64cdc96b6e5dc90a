"""A small batched decode loop for deployments: every row keeps its own adapter, its own
stop conditions and its own stream of tokens, over one KV cache."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

from .errors import AdapterHubError


class GenerationError(AdapterHubError, ValueError):
    """Bad generation input: prompt too long, bad parameters, no tokenizer."""


def _encode(dep: Any, prompts: Sequence[Any]) -> list[list[int]]:
    out = []
    for p in prompts:
        if isinstance(p, str):
            if dep.tokenizer is None:
                raise GenerationError("this base has no tokenizer; pass token ids instead of text")
            out.append(list(dep.tokenizer(p, add_special_tokens=True)["input_ids"]))
        else:
            out.append([int(t) for t in p])
    for ids in out:
        if not ids:
            raise GenerationError("empty prompt")
    return out


def _decode(dep: Any, ids: list[int]) -> str:
    if dep.tokenizer is None:
        return ""
    return dep.tokenizer.decode(ids, skip_special_tokens=True)


def _pick(logits: Any, temperature: float, top_p: float, generator: Any) -> Any:
    import torch

    if temperature <= 0:
        return logits.argmax(-1)
    logits = logits.float()
    # shift the best logit to 0 before dividing: a tiny temperature then sends the others to
    # -inf (greedy) instead of overflowing every logit to inf and the softmax to NaN
    probs = torch.softmax((logits - logits.amax(-1, keepdim=True)) / temperature, dim=-1)
    if top_p < 1.0:
        sorted_p, order = probs.sort(dim=-1, descending=True)
        keep = sorted_p.cumsum(-1) - sorted_p < top_p
        sorted_p = sorted_p * keep
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_p)
        probs = probs / probs.sum(-1, keepdim=True)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def _cache_kwargs(model: Any) -> tuple[str, dict[str, Any]]:
    """The name of the KV-cache argument (``cache`` in transformers 5, ``past_key_values``
    before) and the keep-only-last-logits argument, when the model takes one."""
    import inspect

    params = inspect.signature(model.forward).parameters
    cache_kw = "cache" if "cache" in params else "past_key_values"
    extra = {"logits_to_keep": 1} if "logits_to_keep" in params else {}
    return cache_kw, extra


def _cache_of(out: Any) -> Any:
    cache = getattr(out, "cache", None)
    return cache if cache is not None else getattr(out, "past_key_values", None)


def generate_rows(dep: Any, prompts: Sequence[Any], adapters: Sequence[str | None] | str | None, *,
                  max_new_tokens: int, temperature: float, top_p: float, stop: Sequence[str],
                  on_token: Callable[[int, int], bool | None] | None, seed: int | None) -> list[dict[str, Any]]:
    import torch

    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or not 1 <= max_new_tokens <= 4096:
        raise GenerationError(f"max_tokens must be an integer between 1 and 4096, not {max_new_tokens!r}")
    if not (math.isfinite(temperature) and temperature >= 0 and 0 < top_p <= 1):
        raise GenerationError(f"temperature must be a finite number >= 0 and top_p in (0, 1], not "
                              f"{temperature!r} and {top_p!r}")
    if isinstance(prompts, str):
        prompts = [prompts]
    rows = _encode(dep, prompts)
    n = len(rows)
    if n == 0:
        raise GenerationError("no prompts to generate for", hint="pass a list of strings or of token id lists")
    vocab = dep.model.get_input_embeddings().num_embeddings
    for ids in rows:
        bad = [t for t in ids if not 0 <= t < vocab]
        if bad:
            raise GenerationError(f"token id {bad[0]} is outside the model's vocabulary (0..{vocab - 1})")
    names = [adapters] * n if adapters is None or isinstance(adapters, str) else list(adapters)
    if len(names) != n:
        raise GenerationError(f"{n} prompts but {len(names)} adapters")
    limit = getattr(dep.model.config, "max_position_embeddings", None)
    for ids in rows:
        if limit and len(ids) + max_new_tokens > limit:
            raise GenerationError(f"prompt of {len(ids)} tokens plus max_tokens {max_new_tokens} exceeds the "
                                  f"model's context of {limit} tokens")
    tok = dep.tokenizer
    pad = (tok.pad_token_id if tok is not None and tok.pad_token_id is not None else
           (tok.eos_token_id if tok is not None and tok.eos_token_id is not None else 0))
    eos = tok.eos_token_id if tok is not None else getattr(dep.model.config, "eos_token_id", None)
    eos_ids = set(eos if isinstance(eos, list) else [eos]) - {None}
    width = max(len(r) for r in rows)
    device = dep.device
    input_ids = torch.full((n, width), pad, dtype=torch.long)
    mask = torch.zeros((n, width), dtype=torch.long)
    for i, ids in enumerate(rows):  # left padding keeps every row's last token at the end
        input_ids[i, width - len(ids):] = torch.tensor(ids)
        mask[i, width - len(ids):] = 1
    input_ids, mask = input_ids.to(device), mask.to(device)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    generator = torch.Generator(device=device).manual_seed(seed) if seed is not None else None
    produced: list[list[int]] = [[] for _ in range(n)]
    finish: list[str | None] = [None] * n
    cache_kw, extra = _cache_kwargs(dep.model)
    with torch.no_grad(), dep.use(names):
        out = dep.model(input_ids=input_ids, attention_mask=mask, position_ids=positions, use_cache=True, **extra)
        past = _cache_of(out)
        logits = out.logits[:, -1, :]
        last_pos = positions[:, -1]
        for _step in range(max_new_tokens):
            nxt = _pick(logits, temperature, top_p, generator)
            for i in range(n):
                if finish[i] is not None:
                    continue
                t = int(nxt[i])
                if t in eos_ids:
                    finish[i] = "stop"
                    continue
                produced[i].append(t)
                if on_token is not None and on_token(i, t) is False:
                    finish[i] = "stop"
                    continue
                if stop and any(s in _decode(dep, produced[i]) for s in stop):
                    finish[i] = "stop"
                elif len(produced[i]) >= max_new_tokens:
                    finish[i] = "length"
            if all(f is not None for f in finish):
                break
            nxt = torch.where(torch.tensor([f is None for f in finish], device=device), nxt,
                              torch.full_like(nxt, pad))
            mask = torch.cat([mask, torch.ones((n, 1), dtype=mask.dtype, device=device)], dim=1)
            last_pos = last_pos + 1
            out = dep.model(input_ids=nxt[:, None], attention_mask=mask, position_ids=last_pos[:, None],
                            use_cache=True, **{cache_kw: past}, **extra)
            past = _cache_of(out)
            logits = out.logits[:, -1, :]
    results = []
    for i in range(n):
        text = _decode(dep, produced[i])
        for s in stop:
            if s and s in text:
                text = text[: text.index(s)]
        results.append({"text": text, "token_ids": produced[i], "finish_reason": finish[i] or "length",
                        "prompt_tokens": len(rows[i]), "completion_tokens": len(produced[i])})
    return results
