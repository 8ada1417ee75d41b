"""What every `cairn` command shares: opening the store, options, and progress bars."""

from __future__ import annotations

import signal
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from typer.core import TyperArgument, TyperCommand

from cairn import config, wiring
from cairn.cli import output
from cairn.device_store import Store
from cairn.model import Filters

JsonFlag = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]
ProjectOpt = Annotated[
    str | None, typer.Option("--project", "-p", help="Only memories of this project.")
]
KindOpt = Annotated[
    list[str] | None, typer.Option("--kind", "-k", help="Only this kind (repeatable).")
]
TagOpt = Annotated[
    list[str] | None,
    typer.Option("--tag", "-t", help="Only memories with this tag (repeatable; all must match)."),
]
SinceOpt = Annotated[
    str | None, typer.Option(help="Only memories created since (ISO date, or an age: 7d, 12h).")
]
UntilOpt = Annotated[str | None, typer.Option(help="Only memories created before (ISO or age).")]


def parse_filters(
    project: str | None,
    kind: list[str] | None,
    tag: list[str] | None,
    since: str | None,
    until: str | None,
) -> Filters:
    """The filters a command's --project, --kind, --tag, --since and --until name."""
    return Filters.parse(project, split(kind), split(tag), since, until)


class Command(TyperCommand):
    """A command whose usage line is in the usual notation, `cairn edit [OPTIONS] ID [TEXT]`:
    Typer writes a required argument as `{ID}`, which reads as if the braces were typed."""

    def collect_usage_pieces(self, ctx: Any) -> list[str]:  # Typer's vendored click Context
        pieces = [self.options_metavar] if self.options_metavar else []
        for param in self.get_params(ctx):
            if isinstance(param, TyperArgument):
                name = (param.metavar or param.name or "").upper()
                name += "..." if param.nargs != 1 else ""
                pieces.append(name if param.required else f"[{name}]")
            else:
                pieces.extend(param.get_usage_pieces(ctx))
        return pieces


class App(typer.Typer):
    """A Typer app whose commands are ``Command``s."""

    def command(  # type: ignore[override]
        self, name: str | None = None, *, cls: type[TyperCommand] | None = None, **options: Any
    ) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        return super().command(name, cls=cls or Command, **options)


def open_store(project: str | None = None, source: str = "cli") -> Store:
    store = wiring.build(config.load(source=source), project=project)
    store.db.on_wait = _waiting
    return store


def _waiting(path: Path, bound: float) -> None:
    """Say why a write is slow: another process holds the store's write lock."""
    output.err.print(
        f"waiting for another process to finish writing to {path} (up to {bound:g} s)…"
    )


@contextmanager
def until_stopped() -> Iterator[None]:
    """Run a long-lived command's block until Ctrl-C or SIGTERM (how a service manager or an
    agent stops it); either ends it cleanly: the block's ``finally`` clauses run (the sync
    worker gives its lease back) and the command exits 0."""
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        yield
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)


def _interrupt(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


def split(values: list[str] | None) -> tuple[str, ...]:
    """Repeatable options also accept comma-separated values: -t a,b -t c."""
    return tuple(v.strip() for raw in values or () for v in raw.split(",") if v.strip())


def _bar() -> Progress:
    """A progress bar on stderr, hidden when stderr is not a terminal."""
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=output.err,
        transient=True,
        disable=not output.err.is_terminal,
    )


@contextmanager
def progress(label: str, total: int | None) -> Iterator[Callable[[int], None]]:
    """Yields ``advance(n)``."""
    with _bar() as bar:
        task = bar.add_task(label, total=total)
        yield lambda n: bar.advance(task, n)


@contextmanager
def progress_to(label: str) -> Iterator[Callable[[int, int], None]]:
    """Yields ``update(done, total)`` for work whose total is learnt along the way."""
    with _bar() as bar:
        task = bar.add_task(label, total=None)
        yield lambda done, total: bar.update(task, completed=done, total=total)
