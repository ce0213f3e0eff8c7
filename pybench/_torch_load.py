"""``torch.load(weights_only=True)`` with its refusals as one clear ValueError.

torch's own message for a file that pickles objects advises re-running with ``weights_only=False`` -- the unsafe
load pybench never does -- so the reason is taken out of it: the global the file names, or the unpickler's or the
archive reader's first sentence.
"""

from __future__ import annotations

import os
import re
from typing import Any

import torch

__all__ = ["load_data"]


def load_data(path: str | os.PathLike, what: str, hint: str = "", map_location: Any = "cpu") -> Any:
    """The plain data (tensors, dicts, lists, numbers, strings) in the torch.save file ``path``.

    Raises ValueError naming ``what`` the file should be (e.g. "a pybench model file"), why it is not, and
    ``hint`` (how to make one); a folder raises IsADirectoryError, a missing file FileNotFoundError, anything but a
    path TypeError.
    """
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a str or os.PathLike, got {type(path).__name__}")
    if os.path.isdir(path):
        raise IsADirectoryError(f"{os.fspath(path)!r} is a folder; give {what}{hint}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except OSError:  # the file is missing or unreadable: the caller's error, as it is
        raise
    except Exception as e:  # weights_only never runs code, but on arbitrary bytes its unpickler can fail any way
        # (IndexError from an opcode without its mark, TypeError, struct.error...): each is "not a file of ours"
        text = str(e).strip()
        named = re.search(r"Unsupported global: GLOBAL (\S+)", text)
        if named:
            raise ValueError(f"{os.fspath(path)} is not {what}: it pickles objects (it names {named.group(1)}), "
                             f"not only tensors and plain data, and loading it could run code{hint}") from None
        unpickler = re.search(r"WeightsUnpickler error:\s*(.+)", text)  # torch's reason, inside its advice
        reason = unpickler.group(1).splitlines()[0] if unpickler else \
            re.split(r"(?<=\.)\s", text.splitlines()[0] if text else type(e).__name__)[0]
        raise ValueError(f"{os.fspath(path)} is not {what}: torch.load cannot read it ({reason[:160]}); it is "
                         f"truncated, damaged or another format{hint}") from None
