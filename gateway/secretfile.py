"""The rule for files that hold secrets: a regular file owned by root or by us, with no
access for group or others. The EAP users file uses it; gateway/config.py's
`_secret_file` applies the same rule to `psk_file` and keys with its own copy, which the
second phase of issue 17 (after the config re-lay) replaces by a call to this one."""

from __future__ import annotations

import os
import stat
from pathlib import Path


def check_secret_file(path: Path, what: str) -> None:
    """ValueError unless `path` is a regular file owned by root (or us), readable by its
    owner only. The message names the file and the fix, never its content."""
    try:
        info = path.stat()
    except FileNotFoundError:
        raise ValueError(f"{str(path)!r}: no such file") from None
    except OSError as exc:
        raise ValueError(f"{str(path)!r}: {exc.strerror}") from None
    if not stat.S_ISREG(info.st_mode):
        raise ValueError(f"{str(path)!r}: not a regular file")
    if info.st_uid not in (0, os.geteuid()):
        raise ValueError(f"{str(path)!r}: {what} file must be owned by root")
    if info.st_mode & 0o077:
        raise ValueError(
            f"{str(path)!r}: {what} file is accessible by group/others "
            f"(mode {stat.S_IMODE(info.st_mode):04o}); run chmod 600"
        )
    if not os.access(path, os.R_OK):
        raise ValueError(f"{str(path)!r}: not readable")
