"""Human-readable evidence reports: one self-contained HTML file (Jinja2, images embedded as data URIs)."""

from verifier.report.html import render_claims_report, write_claims_report

__all__ = ["render_claims_report", "write_claims_report"]
