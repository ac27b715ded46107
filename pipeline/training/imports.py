"""A user's own callable, named `package.module:name`, imported from the current folder or the
environment: their model's or their data set's factory."""

import importlib
import sys
from pathlib import Path

from pipeline.errors import UserError


def is_reference(value: str) -> bool:
    module_name, sep, name = value.partition(":")
    return bool(sep and module_name and name) and "/" not in module_name


def named_callable(reference: str, what: str):
    """The callable `reference` names (UserError, naming `what`, when it cannot be had)."""
    module_name, _, name = reference.partition(":")
    if str(Path.cwd()) not in sys.path:
        sys.path.insert(0, str(Path.cwd()))
    try:
        module = importlib.import_module(module_name)
    except Exception as e:
        raise UserError(f"{what} '{reference}': cannot import {module_name}: {e}") from None
    make = getattr(module, name, None)
    if make is None:
        raise UserError(f"{what} '{reference}': {module_name} has no {name}")
    if not callable(make):
        raise UserError(f"{what} '{reference}': {name} is not callable")
    return make
