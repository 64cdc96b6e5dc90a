"""Rows decoding together over one KV cache, joining and leaving between steps.

A :class:`KVBatch` holds the running rows' shared transformers ``DynamicCache`` (each layer's
keys and values ``[batch, heads, seq, dim]``), a 2-d attention mask ``[batch, seq]`` and each
row's next position. A row prefilled on its own (:class:`Prefill`, in bounded chunks) joins
with :meth:`KVBatch.add`: the shorter side is left-padded along ``seq`` with zero keys and
values under mask 0, so every row's newest entry stays in the last column. :meth:`keep`
drops finished rows (``index_select`` on the batch dimension) and the leading columns no
remaining row uses. Positions are explicit per row, so rotary embeddings see each row's own
positions wherever its entries sit in the shared cache.

Masked entries contribute exactly nothing: the model turns the 2-d mask into a boolean one
(SDPA: ``-inf`` before the softmax; eager: the dtype's minimum, whose exponential is 0), and
a decode query is always its own row's real token, so no softmax row is empty.
"""

from __future__ import annotations

from typing import Any

from .errors import AdapterHubError
from .generation import _cache_kwargs, _cache_of


class UnsupportedCacheError(AdapterHubError, RuntimeError):
    """The model's KV cache is not one the continuous scheduler can merge and split."""


def check_cache(cache: Any) -> list[Any]:
    """The cache's layers, each a plain full-attention ``DynamicLayer`` (sliding-window, static,
    quantized or offloaded layers keep state this module does not merge: refused)."""
    from transformers.cache_utils import DynamicLayer

    layers = list(getattr(cache, "layers", None) or [])
    odd = {type(layer).__name__ for layer in layers if type(layer) is not DynamicLayer}
    if not layers or odd:
        raise UnsupportedCacheError(
            f"the continuous scheduler merges full-attention DynamicCache layers; this model's cache has "
            f"{', '.join(sorted(odd)) or type(cache).__name__}",
            hint="serve this model with 'adapterhub serve --scheduler static'")
    return layers


def check_model(model: Any, device: Any) -> None:
    """Refuse, before serving, a model whose cache :class:`KVBatch` cannot merge (one forward
    of one token, no adapter)."""
    import torch

    cache_kw, extra = _cache_kwargs(model)
    with torch.no_grad():
        out = model(input_ids=torch.zeros((1, 1), dtype=torch.long, device=device), use_cache=True, **extra)
    check_cache(_cache_of(out))


def _left_pad(t: Any, n: int, dim: int) -> Any:
    """``t`` with ``n`` zero entries prepended along ``dim``."""
    if n <= 0:
        return t
    import torch

    shape = list(t.shape)
    shape[dim] = n
    return torch.cat([t.new_zeros(shape), t], dim=dim)


class Prefill:
    """One newcomer's prompt, run through the model alone (batch of one), ``chunk`` tokens at a
    time, into its own cache."""

    def __init__(self, ids: list[int]):
        self.ids = ids
        self.done = 0  # prompt tokens in the cache
        self.cache: Any = None
        self.logits: Any = None  # [vocab]: the last prompt token's, once done

    @property
    def finished(self) -> bool:
        return self.done >= len(self.ids)

    def run(self, batch: KVBatch, chunk: int) -> int:
        """Prefill up to ``chunk`` more prompt tokens with ``batch``'s model (call inside
        ``Deployment.use``); returns how many."""
        import torch

        model, device, (cache_kw, extra) = batch.model, batch.device, batch.kwargs
        part = self.ids[self.done:self.done + max(1, chunk)]
        end = self.done + len(part)
        kwargs = {cache_kw: self.cache} if self.cache is not None else {}
        out = model(input_ids=torch.tensor([part], dtype=torch.long, device=device),
                    attention_mask=torch.ones((1, end), dtype=torch.long, device=device),
                    position_ids=torch.arange(self.done, end, device=device)[None], use_cache=True,
                    **kwargs, **extra)
        self.cache = _cache_of(out)
        self.done = end
        if self.finished:
            self.logits = out.logits[0, -1, :]
        return len(part)


class KVBatch:
    """The running rows' shared cache, mask and positions (row i of each is batch row i)."""

    def __init__(self, model: Any, device: Any):
        self.model = model
        self.device = device
        self.kwargs = _cache_kwargs(model)  # the cache argument's name, logits_to_keep
        self.cache: Any = None
        self.mask: Any = None  # [rows, seq] long, 1 = a real entry
        self.pos: Any = None  # [rows] the position of each row's next token

    @property
    def rows(self) -> int:
        return 0 if self.mask is None else int(self.mask.shape[0])

    @property
    def width(self) -> int:
        return 0 if self.mask is None else int(self.mask.shape[1])

    def prefill(self, prompts: list[list[int]], pad: int = 0) -> Any:
        """Fill this empty batch with ``prompts`` in one forward, left-padded (call inside
        ``Deployment.use``, one name per prompt). Returns each row's last logits ``[rows, vocab]``."""
        import torch

        width = max(len(ids) for ids in prompts)
        ids = torch.full((len(prompts), width), pad, dtype=torch.long)
        mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for i, row in enumerate(prompts):
            ids[i, width - len(row):] = torch.tensor(row, dtype=torch.long)
            mask[i, width - len(row):] = 1
        ids, mask = ids.to(self.device), mask.to(self.device)
        cache_kw, extra = self.kwargs
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0),
                         use_cache=True, **extra)
        self.cache, self.mask = _cache_of(out), mask
        self.pos = torch.tensor([len(row) for row in prompts], dtype=torch.long, device=self.device)
        return out.logits[:, -1, :]

    def add(self, prefill: Prefill) -> None:
        """A row prefilled alone joins as the last batch row."""
        import torch

        row = KVBatch(self.model, self.device)
        row.cache = prefill.cache
        row.mask = torch.ones((1, prefill.done), dtype=torch.long, device=self.device)
        row.pos = torch.tensor([prefill.done], dtype=torch.long, device=self.device)
        self.merge(row)

    def merge(self, other: KVBatch) -> None:
        """``other``'s rows join after this batch's (the shorter side left-padded under mask 0)."""
        import torch

        if other.rows == 0:
            return
        check_cache(other.cache)
        if self.rows == 0:
            self.cache, self.mask, self.pos = other.cache, other.mask, other.pos
            return
        width = max(self.width, other.width)
        grow, short = width - self.width, width - other.width
        for mine, theirs in zip(check_cache(self.cache), check_cache(other.cache), strict=True):
            mine.keys = torch.cat([_left_pad(mine.keys, grow, 2), _left_pad(theirs.keys, short, 2)], dim=0)
            mine.values = torch.cat([_left_pad(mine.values, grow, 2), _left_pad(theirs.values, short, 2)], dim=0)
        self.mask = torch.cat([_left_pad(self.mask, grow, 1), _left_pad(other.mask, short, 1)], dim=0)
        self.pos = torch.cat([self.pos, other.pos])

    def keep(self, rows: list[int]) -> None:
        """Keep only batch ``rows`` (in that order); trim the leading columns none of them uses."""
        import torch

        if not rows:
            self.cache = self.mask = self.pos = None
            return
        if rows == list(range(self.rows)):
            return
        idx = torch.tensor(rows, dtype=torch.long, device=self.device)
        mask = self.mask.index_select(0, idx)
        used = mask.any(dim=0).nonzero()
        lead = int(used[0]) if used.numel() else 0
        for layer in check_cache(self.cache):
            layer.keys = layer.keys.index_select(0, idx)[:, :, lead:]
            layer.values = layer.values.index_select(0, idx)[:, :, lead:]
        self.mask = mask[:, lead:]
        self.pos = self.pos.index_select(0, idx)

    def step(self, tokens: list[int]) -> Any:
        """One decode forward: row i's next token is ``tokens[i]`` (call inside ``Deployment.use``).
        Returns the logits ``[rows, vocab]``."""
        import torch

        cache_kw, extra = self.kwargs
        self.mask = torch.cat([self.mask, torch.ones((self.rows, 1), dtype=self.mask.dtype, device=self.device)],
                              dim=1)
        out = self.model(input_ids=torch.tensor(tokens, dtype=torch.long, device=self.device)[:, None],
                    attention_mask=self.mask, position_ids=self.pos[:, None], use_cache=True,
                    **{cache_kw: self.cache}, **extra)
        self.cache = _cache_of(out)
        self.pos = self.pos + 1
        return out.logits[:, -1, :]


__all__ = ["KVBatch", "Prefill", "UnsupportedCacheError", "check_cache", "check_model"]
