"""One way for every command to print its result: lines for people, or the same result as
JSON with ``--json``. A command returns a :class:`Result`; :func:`emits` gives it the
``--json`` flag and prints what it returned."""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import click

F = TypeVar("F", bound=Callable[..., Any])

JSON_HELP = "Print the result as JSON instead of text."


@dataclass
class Result:
    """What a command produced.

    ``data`` is what ``--json`` prints (or a callable that builds it, so text output never
    pays for it); ``text`` is the lines people read (or a callable that yields them);
    ``exit_code`` is set after printing either way (``verify`` exits 1 on a problem)."""

    data: Any
    text: Iterable[str] | Callable[[], Iterable[str]] | str = ()
    exit_code: int = 0

    def emit(self, fmt: str = "text") -> None:
        """Print as ``text``, ``json`` (one document) or ``jsonl`` (one object per line)."""
        if fmt == "text":
            lines = self.text() if callable(self.text) else self.text
            for line in [lines] if isinstance(lines, str) else lines:
                click.echo(line)
            return
        data = self.data() if callable(self.data) else self.data
        if fmt == "jsonl":
            for item in data:
                click.echo(json.dumps(item, default=str))
        elif isinstance(data, Iterator):  # a stream: the same text as one array, item by item
            first = True
            for item in data:
                body = json.dumps(item, indent=2, sort_keys=False, default=str).replace("\n", "\n  ")
                click.echo(("[\n  " if first else ",\n  ") + body, nl=False)
                first = False
            click.echo("[]" if first else "\n]")
        else:
            click.echo(json.dumps(data, indent=2, sort_keys=False, default=str))


def emits(f: F) -> F:
    """Give a command ``--json`` and print the :class:`Result` it returns."""

    @functools.wraps(f)
    def wrapper(*args: Any, as_json: bool, **kwargs: Any) -> None:
        as_jsonl = kwargs.pop("as_jsonl", False)  # a command that streams declares --jsonl itself
        if as_json and as_jsonl:
            raise click.UsageError("give --json or --jsonl, not both")
        result = f(*args, **kwargs)
        result.emit("jsonl" if as_jsonl else "json" if as_json else "text")
        if result.exit_code:
            click.get_current_context().exit(result.exit_code)

    # after the command's own options in --help (click lists them in reverse of this list)
    params = wrapper.__dict__.setdefault("__click_params__", [])
    params.insert(0, click.Option(["--json", "as_json"], is_flag=True, help=JSON_HELP))
    return wrapper  # type: ignore[return-value]


def count(n: int, word: str, plural: str | None = None) -> str:
    """``1 blob``, ``2 blobs``: a number with its noun in the right form."""
    return f"{n} {word if n == 1 else plural or word + 's'}"


def human_size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"


def table(header: tuple[str, ...], rows: list[tuple[Any, ...]]) -> Iterable[str]:
    """Left-aligned columns, two spaces apart, the header first."""
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for r in [header, *rows]:
        yield "  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip()
