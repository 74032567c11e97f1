"""Writes that never leave a half-written file behind: write aside, then rename."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import tempfile


def write_text(path: str, text: str) -> None:
    """Atomically replace `path` with `text`."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    # Not mkstemp: its files are private (0600); os.open lets the umask decide, as open() does.
    tmp = os.path.join(directory, f".tmp-{secrets.token_hex(8)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise


def write_json(path: str, obj) -> None:
    write_text(path, json.dumps(obj, indent=2, allow_nan=False) + "\n")


@contextlib.contextmanager
def staged_path(path: str, suffix: str = ""):
    """Yield a temporary path beside `path`; rename it onto `path` on success.

    Works for files and directories. On an exception nothing at `path` changes.
    """
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=".tmp-", dir=directory)
    tmp = os.path.join(staging, os.path.basename(path) + suffix)
    try:
        yield tmp
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
