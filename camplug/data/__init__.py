"""Data and model sources: the synthetic localization set (``synthetic``), annotated image
folders (``folders``) and model specs (``specs``)."""
