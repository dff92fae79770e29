"""Deployable CAM: :class:`CamModel`, one ``nn.Module`` returning ``(logits, maps)`` that
``torch.compile`` (fullgraph), ``torch.export`` and ``torch.onnx.export`` trace."""

from .cam_model import DEPLOYABLE_METHODS, CamModel

__all__ = ["DEPLOYABLE_METHODS", "CamModel"]
