"""A small batched decode loop for deployments: every row keeps its own adapter, its own
sampling settings and random generator, its own stop conditions, its own stream of tokens
and its own failure, over one KV cache."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from .errors import AdapterHubError
from .generation_inputs import (
    GenerationError,
    check_context,
    check_max_tokens,
    check_prompt_ids,
    check_seed,
    check_stop,
    check_temperature,
    check_top_p,
    no_prompts,
    no_tokenizer,
)


def _encode(dep: Any, prompts: Sequence[Any]) -> list[list[int]]:
    vocab = int(dep.model.get_input_embeddings().num_embeddings)
    out = []
    for p in prompts:
        if isinstance(p, str):
            if dep.tokenizer is None:
                raise no_tokenizer()
            ids = list(dep.tokenizer(p, add_special_tokens=True)["input_ids"])
        else:
            ids = [int(t) for t in p]
        out.append(check_prompt_ids(ids, vocab))
    return out


def cut_at_stop(text: str, stop: Sequence[str]) -> str:
    """``text`` up to its first stop sequence (the server cuts streamed text the same way)."""
    for s in stop:
        if s and s in text:
            text = text[: text.index(s)]
    return text


def _decode(dep: Any, ids: list[int]) -> str:
    if dep.tokenizer is None:
        return ""
    return dep.tokenizer.decode(ids, skip_special_tokens=True)


class RowError(AdapterHubError, RuntimeError):
    """One row of a batch failed while generating; the other rows ran on without it.

    ``code``: ``nonfinite_logits`` (see :class:`NonFiniteLogitsError`) or ``generation_failed``
    (sampling or the ``on_token`` callback raised). ``row``: its index in the batch.
    ``results``: set when :func:`generate_rows` raises it because every row failed: the
    per-row results, each failed one carrying its own ``error``."""

    code = "generation_failed"

    def __init__(self, message: str, *, row: int, code: str | None = None, hint: str | None = None):
        super().__init__(message, hint=hint)
        self.row = row
        if code is not None:
            self.code = code
        self.results: list[dict[str, Any]] | None = None


class NonFiniteLogitsError(RowError):
    """A row's next-token logits hold NaN or +Inf (or are all -Inf): there is nothing to pick
    from, and no token would be what PEFT's model computes. Usually corrupt adapter weights."""

    code = "nonfinite_logits"


def _per_row(value: Any, n: int, what: str) -> list[Any]:
    """One value per row: a scalar applies to every row, a sequence must have n items."""
    if value is None or isinstance(value, (int, float)):
        return [value] * n
    values = list(value)
    if len(values) != n:
        raise GenerationError(f"{n} prompts but {len(values)} values of {what}", param=what,
                              hint=f"give one {what} for every row, or a single one for all rows")
    return values


def _generators(seeds: list[Any], temps: list[float], device: Any) -> list[Any]:
    """One torch.Generator per sampled row (None for greedy rows): seeded rows start from
    their seed, the others from fresh entropy, so no row's draws depend on which rows share
    its batch."""
    import torch

    out: list[Any] = []
    for seed, temp in zip(seeds, temps):
        if temp <= 0:
            out.append(None)
            continue
        g = torch.Generator(device=device)
        g.manual_seed(seed) if seed is not None else g.seed()
        out.append(g)
    return out


def _nonfinite(logits: Any) -> list[bool]:
    """Per row: True when its logits hold NaN or +Inf, or every one is -Inf. (-Inf on some
    tokens only is a model excluding them: argmax and softmax handle it as PEFT's model would.)"""
    import torch

    # one reduction per step: a row whose sum is finite has only finite logits (NaN and Inf
    # propagate); only rows failing that (or overflowing it) get the exact check
    suspect = (~torch.isfinite(logits.sum(-1, dtype=torch.float32))).tolist()
    out = [False] * len(suspect)
    for i, maybe in enumerate(suspect):
        if maybe:
            row = logits[i]
            out[i] = bool((torch.isnan(row) | torch.isposinf(row)).any() or torch.isneginf(row).all())
    return out


def _sample(logits: Any, temperature: float, top_p: float, generator: Any) -> int:
    """One token from one row's logits (1-d), drawing only from that row's generator."""
    import torch

    logits = logits.float()
    # shift the best logit to 0 before dividing: a tiny temperature then sends the others to
    # -inf (greedy) instead of overflowing every logit to inf and the softmax to NaN; one
    # below float32's smallest number (0 in float32: 0/0) is that limit itself, the best alone
    shifted = logits - logits.amax()
    if temperature < torch.finfo(torch.float32).tiny:
        shifted = torch.where(shifted == 0, 0.0, float("-inf"))
        temperature = 1.0
    probs = torch.softmax(shifted / temperature, dim=-1)
    if top_p < 1.0:
        sorted_p, order = probs.sort(descending=True)
        keep = sorted_p.cumsum(-1) - sorted_p < top_p
        keep[0] = True  # the most likely token always stays (a top_p that is 0 in float32 kept none)
        sorted_p = sorted_p * keep
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_p)
        probs = probs / probs.sum()
    return int(torch.multinomial(probs, 1, generator=generator))


def _one_line(exc: BaseException) -> str:
    return " ".join(f"{type(exc).__name__}: {exc}".split())


def special_ids(dep: Any) -> tuple[int, set[int]]:
    """The id padded rows are filled with, and the ids that end a row (end of sequence)."""
    tok = dep.tokenizer
    pad = (tok.pad_token_id if tok is not None and tok.pad_token_id is not None else
           (tok.eos_token_id if tok is not None and tok.eos_token_id is not None else 0))
    eos = tok.eos_token_id if tok is not None else getattr(dep.model.config, "eos_token_id", None)
    return int(pad), set(eos if isinstance(eos, list) else [eos]) - {None}


def who_of(name: str | None) -> str:
    """How an error names a row's model: the adapter, or the base."""
    return f"the adapter {name!r}" if name not in (None, "", "base") else "the base model"


def next_token(logits: Any, greedy: int, broken: bool, temperature: float, top_p: float, generator: Any, *,
               who: str | None, step: int, row: int) -> int:
    """One row's next token (the step every decode loop here shares): ``greedy`` (its argmax)
    at temperature 0, else a draw from its own ``generator``. ``broken``: its logits are not
    finite (see :func:`_nonfinite`). Raises :class:`NonFiniteLogitsError` or :class:`RowError`
    (sampling failed) for this row alone; ``who`` names its adapter (None: the base)."""
    if broken:
        raise NonFiniteLogitsError(
            f"{who_of(who)} produced non-finite logits (NaN or Inf) at generation step {step}", row=row,
            hint="its weights are likely corrupt: check them, or publish and attach a healthy version")
    if temperature <= 0:
        return greedy
    try:
        return _sample(logits, temperature, top_p, generator)
    except Exception as exc:  # noqa: BLE001 - this row's failure, not its batch's
        raise RowError(f"sampling failed ({_one_line(exc)})", row=row) from None


def token_logprobs(logits: Any, token: int, top: int) -> tuple[float, list[tuple[int, float]]]:
    """The log-probability of ``token`` under one row's logits (the model's distribution, before
    temperature and top_p, as OpenAI and vLLM report it) and the ``top`` most likely tokens."""
    import torch

    lp = torch.log_softmax(logits.float(), dim=-1)
    best: list[tuple[int, float]] = []
    if top > 0:
        values, ids = lp.topk(min(top, lp.shape[-1]))
        best = list(zip(ids.tolist(), values.tolist()))
    return float(lp[token]), best


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
                  max_new_tokens: int, temperature: float | Sequence[float], top_p: float | Sequence[float],
                  stop: Sequence[str], on_token: Callable[[int, int], bool | None] | None,
                  seed: int | Sequence[int | None] | None) -> list[dict[str, Any]]:
    """The decode loop behind :meth:`Deployment.generate` (see there for the contract).

    Each row samples with its own temperature, top_p and generator, so a row's tokens do not
    depend on the rows beside it. A row whose logits are not finite, or whose sampling or
    ``on_token`` raises, is finished with ``finish_reason: "error"`` and its own ``error``;
    the others run on. When every row failed, the first failure is raised (``RowError``,
    with ``.results``)."""
    import torch

    max_new_tokens = check_max_tokens(max_new_tokens)
    stop = check_stop(stop)
    if isinstance(prompts, str):
        prompts = [prompts]
    rows = _encode(dep, prompts)
    n = len(rows)
    if n == 0:
        raise no_prompts()
    temps = [check_temperature(t) for t in _per_row(temperature, n, "temperature")]
    top_ps = [check_top_p(p) for p in _per_row(top_p, n, "top_p")]
    seeds = [check_seed(s) for s in _per_row(seed, n, "seed")]
    names = [adapters] * n if adapters is None or isinstance(adapters, str) else list(adapters)
    if len(names) != n:
        raise GenerationError(f"{n} prompts but {len(names)} adapters")
    limit = getattr(dep.model.config, "max_position_embeddings", None)
    for ids in rows:
        check_context(len(ids), max_new_tokens, limit)
    pad, eos_ids = special_ids(dep)
    width = max(len(r) for r in rows)
    device = dep.device
    generators = _generators(seeds, temps, device)
    input_ids = torch.full((n, width), pad, dtype=torch.long)
    mask = torch.zeros((n, width), dtype=torch.long)
    for i, ids in enumerate(rows):  # left padding keeps every row's last token at the end
        input_ids[i, width - len(ids):] = torch.tensor(ids)
        mask[i, width - len(ids):] = 1
    input_ids, mask = input_ids.to(device), mask.to(device)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    produced: list[list[int]] = [[] for _ in range(n)]
    finish: list[str | None] = [None] * n
    errors: list[RowError | None] = [None] * n

    def fail(i: int, err: RowError) -> None:
        finish[i], errors[i] = "error", err

    cache_kw, extra = _cache_kwargs(dep.model)
    with torch.no_grad(), dep.use(names):
        out = dep.model(input_ids=input_ids, attention_mask=mask, position_ids=positions, use_cache=True, **extra)
        past = _cache_of(out)
        logits = out.logits[:, -1, :]
        last_pos = positions[:, -1]
        for step in range(max_new_tokens):
            broken = _nonfinite(logits)
            greedy = logits.argmax(-1).tolist()
            nxt = [pad] * n
            for i in range(n):
                if finish[i] is not None:
                    continue
                try:
                    t = next_token(logits[i], greedy[i], broken[i], temps[i], top_ps[i], generators[i],
                                   who=names[i], step=step + 1, row=i)
                except RowError as row_err:  # this row's failure, not its batch's
                    fail(i, row_err)
                    continue
                if t in eos_ids:
                    finish[i] = "stop"
                    continue
                produced[i].append(t)
                nxt[i] = t
                if on_token is not None:
                    try:
                        keep_going = on_token(i, t)
                    except Exception as exc:  # noqa: BLE001 - a callback failing for one row stops that row
                        fail(i, RowError(f"on_token raised for row {i} ({_one_line(exc)})", row=i))
                        continue
                    if keep_going is False:
                        finish[i] = "stop"
                        continue
                if stop and any(s in _decode(dep, produced[i]) for s in stop):
                    finish[i] = "stop"
                elif len(produced[i]) >= max_new_tokens:
                    finish[i] = "length"
            if all(f is not None for f in finish):
                break
            step_ids = torch.tensor([t if f is None else pad for t, f in zip(nxt, finish)], dtype=torch.long,
                                    device=device)
            mask = torch.cat([mask, torch.ones((n, 1), dtype=mask.dtype, device=device)], dim=1)
            last_pos = last_pos + 1
            out = dep.model(input_ids=step_ids[:, None], attention_mask=mask, position_ids=last_pos[:, None],
                            use_cache=True, **{cache_kw: past}, **extra)
            past = _cache_of(out)
            logits = out.logits[:, -1, :]
    results = []
    for i in range(n):
        text = cut_at_stop(_decode(dep, produced[i]), stop)
        res: dict[str, Any] = {"text": text, "token_ids": produced[i], "finish_reason": finish[i] or "length",
                               "prompt_tokens": len(rows[i]), "completion_tokens": len(produced[i])}
        err = errors[i]
        if err is not None:
            res["error"] = err.message + (f"; {err.hint}" if err.hint else "")
            res["error_code"] = err.code
        results.append(res)
    first = next((e for e in errors if e is not None), None)
    if first is not None and all(e is not None for e in errors):
        first.results = results
        raise first
    return results

