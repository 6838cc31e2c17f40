"""Quarantine review (web pages, API, CLI): see what waits, release or reject it, every decision audited."""
