"""Captum adapter: ``ClassActivationMap``, a ``captum.attr.LayerAttribution`` (needs captum)."""
