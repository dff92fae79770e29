"""Without captum installed, the adapter says which extra to install."""

import sys

import pytest


def test_without_captum_the_error_names_the_extra(monkeypatch):
    for name in list(sys.modules):
        if name == "captum" or name.startswith(("captum.", "camplug.captum.")):
            monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "captum", None)  # as if captum were not installed
    import camplug

    with pytest.raises(ImportError, match=r"ClassActivationMap needs captum.*"
                       r"pip install 'camplug\[captum\]'"):
        camplug.ClassActivationMap  # noqa: B018
    with pytest.raises(ImportError, match=r"pip install 'camplug\[captum\]'"):
        from camplug.captum.attribution import ClassActivationMap  # noqa: F401
