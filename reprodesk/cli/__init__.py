"""The terminal front end: rendering over the `Runs` service (typer + rich)."""

from reprodesk.cli.app import app, main

__all__ = ["app", "main"]
