"""Where spikecast finds shared read-only data and where it caches derived files.

* :func:`shared_dir` is the read-only folder of datasets and pretrained weights
  (``data/cifar10-jpeg``, ``models/cifar10``...).  It is taken from the
  ``SPIKECAST_SHARED`` environment variable, else ``../shared`` next to the
  repository root.
* :func:`cache_dir` is a writable folder for files spikecast makes itself (e.g.
  the trained digits CNN).  It is taken from ``SPIKECAST_CACHE``, else
  ``~/.cache/spikecast``.
"""

from __future__ import annotations

import os
from pathlib import Path

SHARED_ENV_VAR = "SPIKECAST_SHARED"
CACHE_ENV_VAR = "SPIKECAST_CACHE"

#: Repository root: the parent of the ``spikecast`` package folder.
REPO_ROOT = Path(__file__).resolve().parent.parent


def shared_dir() -> Path:
    """Return the folder of shared read-only datasets and weights.

    Resolution order:

    1. the ``SPIKECAST_SHARED`` environment variable, if set and non-empty;
    2. ``<repo root>/../shared`` (repo root = parent of the ``spikecast`` package);
    3. ``<current working directory>/../shared``.

    The returned path is not guaranteed to exist when it comes from step 1 or 3;
    callers raise their own :class:`FileNotFoundError` naming the missing file.
    """
    from_env = os.environ.get(SHARED_ENV_VAR, "").strip()
    if from_env:
        return Path(from_env).expanduser()
    next_to_repo = REPO_ROOT.parent / "shared"
    if next_to_repo.is_dir():
        return next_to_repo
    return Path.cwd().parent / "shared"


def cache_dir() -> Path:
    """Return (creating it if needed) the writable spikecast cache folder.

    ``SPIKECAST_CACHE`` if set and non-empty, else ``~/.cache/spikecast``.
    """
    from_env = os.environ.get(CACHE_ENV_VAR, "").strip()
    path = Path(from_env).expanduser() if from_env else Path.home() / ".cache" / "spikecast"
    path.mkdir(parents=True, exist_ok=True)
    return path
