"""Model audit: run a classifier's maps over a dataset, score them, store the rows in SQLite
(resumable), and write a static HTML report. ``camplug.audit.run_audit(model, data,
out_dir=...)`` (also ``camplug.run_audit``) is the entry point; ``camplug audit`` /
``camplug demo`` the command-line ones."""

from __future__ import annotations

from .pipeline import DB_NAME, REPORT_NAME, load_summary, run_audit
from .summary import AuditSummary, FlagThresholds

__all__ = ["DB_NAME", "REPORT_NAME", "AuditSummary", "FlagThresholds", "load_summary", "run_audit"]
