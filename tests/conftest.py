"""Shared test set-up: where the repo is."""

from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

# A user's shell may carry the quickstart's image override; tests choose their images themselves.
os.environ.pop("SHARDCTL_IMAGE", None)
