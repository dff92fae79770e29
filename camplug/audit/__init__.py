"""Model audit: run a classifier's maps over a dataset, score them, store the rows in SQLite
(resumable), and write a static HTML report. ``camplug.audit.run_audit(model, data,
out_dir=...)`` (also ``camplug.run_audit``) is the entry point; ``camplug audit`` /
``camplug demo`` the command-line ones."""

from __future__ import annotations

from .errors import AuditError, AuditInterrupted
from .metric_table import METRICS, MetricDefinition
from .pipeline import load_summary, run_audit
from .run import DB_NAME, REPORT_NAME, AuditRun, RunConfig, RunOptions
from .summary import AuditSummary, FlagThresholds

__all__ = ["DB_NAME", "METRICS", "REPORT_NAME", "AuditError", "AuditInterrupted", "AuditRun",
           "AuditSummary", "FlagThresholds", "MetricDefinition", "RunConfig", "RunOptions",
           "load_summary", "run_audit"]
