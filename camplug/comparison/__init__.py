"""Comparing attribution methods on one batch: the harness (``harness.compare``), the method
registry it runs (``registry``), agreement statistics (``agreement``), cost measurement
(``profiling``) and the result table (``table``)."""
