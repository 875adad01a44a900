"""The one ``register`` check shared by every registry (direction kinds, audit methods, curvature
estimators, plot kinds): the record's type, an identifier name, no silent replacement."""

from __future__ import annotations

from collections.abc import MutableMapping
from typing import Any

from .errors import InvalidArgumentError, bad_type


def add(registry: MutableMapping[str, Any], record: Any, *, cls: type, func: str, arg: str, expected: str,
        what: str, replace: bool = False) -> Any:
    """Put ``record`` (an instance of ``cls``) into ``registry`` under its ``name``; an existing name is
    refused unless ``replace``. ``func``/``arg`` name the public call in messages, ``expected`` the type
    ("a DirectionKind"), ``what`` the kind of record ("a direction kind")."""
    if not isinstance(record, cls):
        raise bad_type(func, arg, expected, record)
    if not record.name or not record.name.isidentifier():
        raise InvalidArgumentError(f"{func}(): argument '{arg}' must have a name that is an identifier; "
                                   f"received {record.name!r}")
    if record.name in registry and not replace:
        raise InvalidArgumentError(f"{func}(): {what} named {record.name!r} is already registered (pass "
                                   "replace=True to replace it)")
    registry[record.name] = record
    return record
