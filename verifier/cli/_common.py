"""Shared CLI plumbing: consoles and settings."""

from __future__ import annotations

from rich.console import Console

from verifier.settings import Settings

__all__ = ["console", "err_console", "settings"]

console = Console(soft_wrap=True)
err_console = Console(stderr=True, soft_wrap=True)


def settings() -> Settings:
    """The settings, read afresh from the file and environment (cheap; keeps tests independent)."""
    return Settings.load()
