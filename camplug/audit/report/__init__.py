"""The audit's static HTML report: page building blocks (``html.py``) and the audit's sections
and gallery (``gallery.py``)."""
