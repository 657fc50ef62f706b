"""Where the golden vectors are: ``default_vectors_dir()``.

The committed copy is ``spec/vectors`` (the documented location). ``mpt_ref/conformance/golden`` is a
link to it in the source tree, and the wheel carries the files themselves there (package data), so one
``importlib.resources`` lookup finds them in a checkout, an editable install and an installed wheel,
whatever the current directory.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from mpt_ref.errors import CheckpointError

PACKAGE = "mpt_ref.conformance"
RESOURCE = "golden"


def default_vectors_dir() -> Path:
    """The directory holding the golden vectors' ``index.json`` (raises CheckpointError if absent)."""
    root = resources.files(PACKAGE).joinpath(RESOURCE)
    candidates = []
    if isinstance(root, Path):  # a package on disk (not a zip import)
        candidates.append(root)
    # a checkout where the link was not made (e.g. git without symlink support): the spec directory itself
    candidates.append(Path(__file__).resolve().parents[2] / "spec" / "vectors")
    for path in candidates:
        if (path / "index.json").is_file():
            return path
    raise CheckpointError(f"--vectors: expected the golden vectors installed with mpt-ref ({PACKAGE}/{RESOURCE}/"
                          "index.json), got none; reinstall mpt-ref from a wheel or sdist, or pass --vectors DIR")
