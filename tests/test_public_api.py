"""Every public name is exported on purpose and documented."""
import inspect

import lossatlas


def test_every_public_name_is_documented():
    for name in lossatlas.__all__:
        if name.startswith("__"):
            continue
        obj = getattr(lossatlas, name)
        assert inspect.getdoc(obj), f"lossatlas.{name} has no docstring"
        if inspect.ismodule(obj):
            for sub in getattr(obj, "__all__", []):
                assert inspect.getdoc(getattr(obj, sub)), f"lossatlas.{name}.{sub} has no docstring"


def test_all_is_explicit_and_importable():
    for name in lossatlas.__all__:
        assert hasattr(lossatlas, name), name
