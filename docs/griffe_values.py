"""A griffe extension for the API reference: a public constant defined as a private one shows its value.

``DEFAULT_MAX_SHIFT = _plan.DEFAULT_MAX_SHIFT`` in ``equivariance.check`` would be shown as written, a
private name a reader cannot look up. For every module attribute whose value names a private module or
attribute (``_plan.X``, ``_X``), the reference shows the value the attribute has when the module is
imported instead: ``DEFAULT_MAX_SHIFT = 2``. ``docs/check_site.py`` fails on a reference page that still
shows one.
"""

from __future__ import annotations

import ast
import importlib
import re
from typing import Any

import griffe

PRIVATE = re.compile(r"(?<![\w.])_[A-Za-z]\w*")


class ValuesOfPrivateNames(griffe.Extension):
    """Replaces a module attribute's value that names something private by its value at run time."""

    def on_attribute_instance(
        self, *, node: ast.AST | griffe.ObjectNode, attr: griffe.Attribute, agent: Any, **kwargs: Any
    ) -> None:
        if attr.value is None or not attr.parent or not attr.parent.is_module:
            return
        if not PRIVATE.search(str(attr.value)) or attr.name.startswith("_"):
            return
        module = importlib.import_module(attr.parent.path)
        attr.value = repr(getattr(module, attr.name))
