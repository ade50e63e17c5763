"""What every CLI command shares: the -o option, JSON output, failing (JSON errors with -o json), the Console."""

from __future__ import annotations

import enum
import json
import os
import sys
from typing import Any, NoReturn

import typer


class Output(enum.StrEnum):
    table = "table"
    json = "json"


OUTPUT = typer.Option(Output.table, "--output", "-o", help="table: for people; json: for scripts.")


def print_json(document: Any) -> None:
    sys.stdout.write(json.dumps(document, indent=2) + "\n")


def fail(output: Output, message: str, code: int = 1, **fields: Any) -> NoReturn:
    """One way every command fails: with -o json a JSON object on stdout (what scripts parse), else a line on
    stderr; then the exit code."""
    if output is Output.json:
        print_json({**fields, "error": message, "exitCode": code})
    else:
        typer.echo(message, err=True)
    raise typer.Exit(code)


def console() -> Any:
    """rich's Console. Off a terminal (a pipe, a file, CI logs) lines are not cut at 80 columns, so that
    timestamps and names stay whole for grep and for people reading logs."""
    from rich.console import Console

    if sys.stdout.isatty():
        return Console()
    return Console(width=int(os.environ.get("COLUMNS") or 0) or 200)
