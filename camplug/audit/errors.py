"""The audit's user-facing errors: ``ValueError`` subclasses, so the command line reports them
as ``camplug: error: ...`` rather than as a traceback."""

from __future__ import annotations


class AuditError(ValueError):
    """A run that cannot start or go on for a reason the user can fix (the output folder is a
    file or in use, the results file is not the audit's, the model cannot be audited)."""


class UnsupportedModelError(AuditError, TypeError):
    """A model the audit cannot capture maps from (e.g. a TorchScript module); also a
    ``TypeError``, as before."""


class AuditInterrupted(KeyboardInterrupt):
    """The audit was stopped by SIGTERM (torchrun, a scheduler, ``kill``); the run is marked
    ``interrupted`` and the same call resumes it."""
