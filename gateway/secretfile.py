"""The rule for files that hold secrets: a regular file owned by root or by us, with no
access for group or others. The config reader applies it to `psk_file`, private keys and
RADIUS secrets; the EAP users file to itself."""

from __future__ import annotations

import os
import stat
from pathlib import Path


def check_secret_file(path: Path, what: str, shown: str | None = None) -> None:
    """ValueError unless `path` is a regular file owned by root (or us), readable by its
    owner only. The message names the file (as `shown`, e.g. the config's spelling of it)
    and the fix, never its content."""
    name = repr(str(path) if shown is None else shown)
    try:
        info = path.stat()
    except FileNotFoundError:
        raise ValueError(f"{name}: no such file") from None
    except OSError as exc:
        raise ValueError(f"{name}: {exc.strerror}") from None
    if not stat.S_ISREG(info.st_mode):
        raise ValueError(f"{name}: not a regular file")
    if info.st_uid not in (0, os.geteuid()):
        raise ValueError(f"{name}: {what} file must be owned by root")
    if info.st_mode & 0o077:
        raise ValueError(
            f"{name}: {what} file is accessible by group/others "
            f"(mode {stat.S_IMODE(info.st_mode):04o}); run chmod 600"
        )
    if not os.access(path, os.R_OK):
        raise ValueError(f"{name}: not readable")
