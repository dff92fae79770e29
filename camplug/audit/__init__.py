"""Model audit: run a classifier's CAMs over a localization set, score them, store the rows in
SQLite (resumable), and write a static HTML report. ``camplug.audit(model, data, out_dir=...)``
is the entry point; ``camplug audit`` / ``camplug demo`` the command-line ones."""

from __future__ import annotations

from .pipeline import DB_NAME, REPORT_NAME, audit, load_summary
from .summary import AuditSummary, FlagThresholds

__all__ = ["DB_NAME", "REPORT_NAME", "AuditSummary", "FlagThresholds", "audit", "load_summary"]
