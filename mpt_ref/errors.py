"""The exceptions mpt-ref raises on bad input. Catch ``MptRefError`` to catch them all.

Each class also derives from the builtin a PyTorch/PEFT user would expect (ValueError, TypeError,
IndexError), so ``except ValueError`` written against PEFT keeps working. Messages name the argument,
what was expected and what was given.

    MptRefError
    ├── ConfigError        (ValueError)  invalid or inconsistent configuration
    ├── CheckpointError    (ValueError)  unreadable, hostile or mismatched checkpoint / state dict
    ├── OutputExistsError  (FileExistsError) refusing to overwrite an output without overwrite=True
    ├── WriteError         (OSError)  an output could not be written (read-only, full disk, name too long)
    ├── RunTimeout         (TimeoutError) running a model took longer than its time limit (stopped)
    └── InputError         (ValueError)  bad call arguments: None, wrong rank or length
        ├── InputTypeError (TypeError)   wrong dtype (float indices, bool ids, int dout, ...)
        └── IndexRangeError(IndexError)  indices or task ids outside their valid range
"""

from __future__ import annotations


class MptRefError(Exception):
    """Base class of every error mpt-ref raises on purpose."""


class ConfigError(MptRefError, ValueError):
    """A configuration field is invalid, or fields contradict each other."""


class CheckpointError(MptRefError, ValueError):
    """A checkpoint or state dict is unreadable, has missing/extra keys, or mismatched shapes/dtypes."""


class OutputExistsError(MptRefError, FileExistsError):
    """An output path already exists and overwriting was not asked for."""


class WriteError(MptRefError, OSError):
    """An output could not be written (read-only filesystem, full disk, a name too long); the files that
    were there are unchanged."""


class RunTimeout(MptRefError, TimeoutError):
    """Running a model took longer than its time limit; the run was stopped."""


class InputError(MptRefError, ValueError):
    """A call argument is missing or has the wrong rank, length or shape."""


class InputTypeError(InputError, TypeError):
    """A call argument has the wrong dtype (or is not array-like)."""


class IndexRangeError(InputError, IndexError):
    """Indices or task ids fall outside their valid range. Never wrapped the way NumPy wraps negatives."""


SHOWN_CHARS = 200  # the most of a user's or a file's text (a name, a path, a runtime's error) a message quotes


def shown(text: object, limit: int = SHOWN_CHARS) -> str:
    """``str(text)`` for an error message, cut to ``limit`` characters with a marker: a hostile file's
    names and a runtime's error texts can be megabytes. For values an attacker built (nested pickle
    structures), io.limits.short, which never calls ``str()`` on the whole."""
    out = str(text)
    return out if len(out) <= limit else out[: limit - 1] + "…"
