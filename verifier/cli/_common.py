"""Shared CLI plumbing: consoles and settings."""

from __future__ import annotations

from rich.console import Console
from rich.markup import escape

from verifier.settings import Settings

__all__ = ["console", "err_console", "note", "settings"]

console = Console(soft_wrap=True)
err_console = Console(stderr=True, soft_wrap=True)


def settings() -> Settings:
    """The settings, read afresh from the file and environment (cheap; keeps tests independent)."""
    return Settings.load()


def note(message: str) -> None:
    """Tell the user something on stderr (what first use created, a check that will not run ...)."""
    err_console.print(f"[yellow]note:[/] {escape(message)}", highlight=False)
