"""The files a store lives in: which data directory, key file and database we trust.

Why: the secrets are only as private as these files. A directory or file that another user owns
or may write (a planted `master.key`, a swapped database), a key file reached through a symbolic
link, a key or database others may read: each is refused or announced, and every OS error on the
way (a file in the way, a read-only or foreign folder) becomes one line that says what to do.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

MAX_KEY_FILE_BYTES = 4096
_WRITABLE_BY_OTHERS = stat.S_IWGRP | stat.S_IWOTH


class UnsafeFileError(Exception):
    """A data directory, key file or database we must not use; the message says how to fix it."""


class KeyFileMissing(UnsafeFileError):
    pass


def os_reason(exc: OSError) -> str:
    return exc.strerror or exc.__class__.__name__


def _ownership_fix(what: str, path: Path, owner: os.stat_result) -> str:
    uid, gid = os.geteuid(), os.getegid()
    fix = f"chown {uid}:{gid} {path} (for a container's bind mount: the host folder)"
    if owner.st_uid != 0:
        fix += f", or run totp-service as its owner (docker run --user {owner.st_uid}:{owner.st_gid})"
    return f"{what} {path} belongs to uid {owner.st_uid}, not to uid {uid} that runs totp-service: {fix}"


def check_trusted(what: str, path: Path, st: os.stat_result) -> None:
    """Refuse what the running user does not own or what others may write."""
    if st.st_uid != os.geteuid():
        raise UnsafeFileError(_ownership_fix(what, path, st))
    if st.st_mode & _WRITABLE_BY_OTHERS:
        raise UnsafeFileError(f"{what} {path} is writable by other users (mode {stat.S_IMODE(st.st_mode):04o}): "
                              f"chmod go-w {path}")


def readable_by_others(path: Path) -> bool:
    """Only for a file we would use: links, foreign and writable files are refused, not announced."""
    try:
        st = os.lstat(path)
    except OSError:
        return False
    trusted = stat.S_ISREG(st.st_mode) and st.st_uid == os.geteuid() and not st.st_mode & _WRITABLE_BY_OTHERS
    return trusted and bool(st.st_mode & (stat.S_IRGRP | stat.S_IROTH))


def unsafe_readable_line(what: str, path: Path) -> str:
    return f"UNSAFE {what} {path} is readable by other users (chmod 600 it)"


def check_data_dir(path: Path) -> bool:
    """False when the directory does not exist; raises UnsafeFileError when it must not be used.

    A symbolic link is followed (a data dir on another disk is common); its target is what must
    be ours. Nothing is chmodded here: changing the mode of a directory we were pointed at could
    open up somebody else's folder.
    """
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    except NotADirectoryError:
        raise UnsafeFileError(f"data directory {path}: a file is in the way on its path; "
                              f"choose another --data-dir") from None
    except OSError as exc:
        raise UnsafeFileError(f"data directory {path} cannot be used ({os_reason(exc)})") from None
    if not stat.S_ISDIR(st.st_mode):
        raise UnsafeFileError(f"data directory {path} is a file, not a folder: move it away or choose another --data-dir")
    check_trusted("data directory", path, st)
    if not os.access(path, os.W_OK | os.X_OK):
        raise UnsafeFileError(f"data directory {path} is read-only (mode {stat.S_IMODE(st.st_mode):04o}): "
                              f"chmod 700 {path}, or choose another --data-dir")
    return True


def make_data_dir(path: Path) -> None:
    """Create the data directory 0700 (parents too) unless it exists; refuse one we must not use."""
    if check_data_dir(path):
        return
    try:
        path.mkdir(mode=0o700, parents=True)
    except FileExistsError:  # a dangling symbolic link, or a race: judge what is there now
        if not check_data_dir(path):
            raise UnsafeFileError(f"data directory {path} is a symbolic link to nowhere: remove it "
                                  f"or choose another --data-dir") from None
        return
    except NotADirectoryError:
        raise UnsafeFileError(f"cannot create data directory {path}: a file is in the way on its path; "
                              f"choose another --data-dir") from None
    except PermissionError:
        raise UnsafeFileError(f"cannot create data directory {path}: permission denied (create it yourself, "
                              f"owned by you, mode 700, or choose another --data-dir)") from None
    except OSError as exc:
        raise UnsafeFileError(f"cannot create data directory {path} ({os_reason(exc)})") from None
    check_data_dir(path)


def read_key_file(path: Path) -> str:
    """The key file's text, never through a symbolic link (O_NOFOLLOW), checked on the open file."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except FileNotFoundError:
        raise KeyFileMissing(f"key file {path} does not exist") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise UnsafeFileError(f"key file {path} is a symbolic link: refusing to follow it "
                                  f"(set key_file to the real file)") from None
        raise UnsafeFileError(f"key file {path} cannot be read ({os_reason(exc)})") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise UnsafeFileError(f"key file {path} is not a regular file")
        check_trusted("key file", path, st)
        data = os.read(fd, MAX_KEY_FILE_BYTES + 1)
    except OSError as exc:
        raise UnsafeFileError(f"key file {path} cannot be read ({os_reason(exc)})") from None
    finally:
        os.close(fd)
    if len(data) > MAX_KEY_FILE_BYTES:
        raise UnsafeFileError(f"key file {path} is too large to be a key file")
    try:
        return data.decode("ascii")
    except UnicodeDecodeError:
        raise UnsafeFileError(f"key file {path} is not a base64 key (not ASCII text)") from None


def check_database(path: Path) -> None:
    """Refuse a database file (when there is one) that is not ours or that others may write."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise UnsafeFileError(f"database {path} cannot be used ({os_reason(exc)})") from None
    if not stat.S_ISREG(st.st_mode):
        raise UnsafeFileError(f"database {path} is not a regular file")
    check_trusted("database", path, st)
