"""What a client or a job record may be told about an error nobody raised on purpose.

A library's message carries server paths and internals, so it goes to the log only. But "internal
error" is no help when the cause is the operator's to fix: a full disk, a file or folder removed
under a running job, a path that is not the kind of thing it should be, permissions. Those get
a message of their own here, naming what happened and never where.
"""

from __future__ import annotations

import errno
import sqlite3

from core.disk import DISK_FULL_MESSAGE, is_disk_full
from core.errors import causes

INTERNAL = "an internal error; the service log has it"
# Errors from the filesystem and the database, answered where they are caught (service.errors).
SYSTEM_ERRORS: tuple[type[Exception], ...] = (OSError, sqlite3.Error)

_OS_ERRORS: dict[int, str] = {
    errno.ENOENT: "a file or folder it needed was removed while it ran (a deleted collection, a "
    "removed input file or a cleaned-up home folder)",
    errno.ENOTDIR: "a path of the service's home that must be a folder is a file",
    errno.EISDIR: "a path of the service's home that must be a file is a folder",
    errno.EEXIST: "a path of the service's home that must be a folder is a file",
    errno.EACCES: "the service may not read or write a file of its home (permissions)",
    errno.EPERM: "the service may not read or write a file of its home (permissions)",
    errno.EROFS: "the service's home is on a read-only filesystem",
    errno.EIO: "the disk reported an input/output error",
}


def describe(exc: BaseException) -> str | None:
    """A public one-line cause for ``exc`` or an exception it came from; None if it is a bug."""
    if is_disk_full(exc):
        return DISK_FULL_MESSAGE
    for current in causes(exc):
        if isinstance(current, OSError) and current.errno in _OS_ERRORS:
            return _OS_ERRORS[current.errno]
    return None
