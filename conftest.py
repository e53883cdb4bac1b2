"""Collection of the package's doctests: a module whose extra is not installed is left out."""

from __future__ import annotations

import importlib.util

# equivariance.lightning imports PyTorch Lightning (the lightning extra); its tests skip without it
collect_ignore = [] if importlib.util.find_spec("lightning") else ["equivariance/lightning.py"]
