"""Shared test set-up: where the repo is."""

from __future__ import annotations

import os
from pathlib import Path

from hypothesis import settings

# Property tests judge correctness, not speed: a loaded 2-core CI machine must not fail them.
settings.register_profile("shardctl", deadline=None)
settings.load_profile("shardctl")

REPO = Path(__file__).resolve().parent.parent

# A user's shell may carry the quickstart's image override; tests choose their images themselves.
os.environ.pop("SHARDCTL_IMAGE", None)
