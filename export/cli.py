"""The `ebr` command line: each stage contributes its own commands."""

from __future__ import annotations

import typer

from export.commands import register as register_export
from index.commands import register as register_index
from service.commands import register as register_service

app = typer.Typer(help="ebr: embedding-based retrieval, from training to serving.", no_args_is_help=True)
register_export(app)
register_index(app)
register_service(app)
