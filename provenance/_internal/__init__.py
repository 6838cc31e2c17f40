"""Plumbing for the provenance package; not a public API."""
