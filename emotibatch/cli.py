"""Thin command line over the library: each command parses, makes one library call and prints."""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Iterator

import click
from rich import box
from rich.console import Console
from rich.table import Table

from emotibatch import registry


@contextlib.contextmanager
def library_errors() -> Iterator[None]:
    """Turn library errors into a one-line CLI error (exit 1) instead of a traceback."""
    try:
        yield
    except (ValueError, RuntimeError, OSError) as exc:
        raise click.ClickException(str(exc)) from exc


def _storage_options(ctx: click.Context, param: click.Parameter, value: str | None) -> dict:
    try:
        options = json.loads(value) if value else {}
    except json.JSONDecodeError as exc:
        raise click.BadParameter(f"not valid JSON: {exc}") from None
    if not isinstance(options, dict):
        raise click.BadParameter("must be a JSON object")
    return options


storage_options_option = click.option(
    "--storage-options",
    callback=_storage_options,
    metavar="JSON",
    help="fsspec storage options as a JSON object, e.g. '{\"anon\": true}'.",
)


@click.group()
@click.version_option(package_name="emotibatch")
def cli() -> None:
    """Facial emotion recognition at cluster scale on Ray Data."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")


@cli.group()
def models() -> None:
    """List and fetch the registered models (cache: $EMOTIBATCH_CACHE or ~/.cache/emotibatch)."""


@models.command("list")
def models_list() -> None:
    """Show the registered models and whether the cache holds them."""
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True)
    for header in ("name", "kind", "input", "classes", "dim", "VA", "cached"):
        table.add_column(header, no_wrap=True)
    table.add_column("licence", overflow="fold")
    for card in registry.list_cards():
        table.add_row(
            card.name,
            card.kind,
            str(card.input_size or "-"),
            str(len(card.classes) or "-"),
            str(card.feature_dim or "-"),
            "yes" if card.has_va else "no",
            "yes" if registry.is_cached(card.name) else "no",
            card.license,
        )
    Console().print(table)


@models.command("pull")
@click.argument("names", nargs=-1, required=True)
@click.option(
    "--to", metavar="DIR_OR_URI", help="Also copy <name>.onnx there (for --model-dir on offline nodes)."
)
@click.option("--sha256", metavar="HEX", help="Pin the sha256 of a model that has no published hash.")
@storage_options_option
def models_pull(names: tuple[str, ...], to: str | None, sha256: str | None, storage_options: dict) -> None:
    """Fetch and verify models into the cache, and optionally copy them to DIR_OR_URI."""
    if sha256 and len(names) != 1:
        raise click.UsageError("--sha256 pins one model: give exactly one NAME")
    with library_errors():
        for name in names:
            if sha256:
                registry.pin_sha256(name, sha256)
            if to:
                click.echo(f"{name}: {registry.export(name, to, storage_options=storage_options)}")
            else:
                click.echo(f"{name}: {registry.resolve(name, storage_options=storage_options)}")
