"""Which data directory, key file and database the command trusts (the real command, a subprocess).

Most cases need a second user: the tests run as root (CI does) and hand folders to `nobody`, or run
the command as `nobody` in a folder it cannot write.
"""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from helpers_cli import B32, NOBODY, Result, command_env, run_command

as_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to hand files to another user")


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return command_env(tmp_path / "data", tmp_path)


@pytest.fixture
def shared_tmp() -> Iterator[Path]:
    """A folder every user can reach (pytest's own tmp folders are root's alone)."""
    path = Path(tempfile.mkdtemp(prefix="totp-trust-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


@as_root
def test_init_refuses_a_folder_another_user_made_with_their_key(env: dict[str, str]) -> None:
    data = Path(env["TOTP_SERVICE_DATA_DIR"])
    data.mkdir(mode=0o700)
    (data / "master.key").write_text("A" * 43 + "=\n")
    (data / "master.key").chmod(0o600)
    for path in (data, data / "master.key"):
        os.chown(path, NOBODY, NOBODY)
    result = run_command(env, "init")
    result.one_line_error(f"data directory {data} belongs to uid {NOBODY}", "chown 0:0",
                          f"--user {NOBODY}:{NOBODY}")
    assert not (data / "totp.db").exists()


@as_root
def test_key_file_or_database_of_another_user_is_refused(env: dict[str, str]) -> None:
    data = Path(env["TOTP_SERVICE_DATA_DIR"])
    assert run_command(env, "init").code == 0
    for name, what in (("master.key", "key file"), ("totp.db", "database")):
        os.chown(data / name, NOBODY, NOBODY)
        run_command(env, "secret", "list").one_line_error(f"{what} {data / name} belongs to uid {NOBODY}")
        os.chown(data / name, 0, 0)
    assert run_command(env, "secret", "list").code == 0


def test_group_or_world_writable_folder_key_or_database_is_refused(env: dict[str, str]) -> None:
    data = Path(env["TOTP_SERVICE_DATA_DIR"])
    assert run_command(env, "init").code == 0
    for path, what, mode in ((data, "data directory", 0o770), (data / "master.key", "key file", 0o606),
                             (data / "totp.db", "database", 0o666)):
        before = _mode(path)
        path.chmod(mode)
        run_command(env, "secret", "list").one_line_error(f"{what} {path} is writable by other users",
                                                          f"chmod go-w {path}")
        assert _mode(path) == mode  # refused, not silently changed
        path.chmod(before)
    assert run_command(env, "secret", "list").code == 0


def test_key_file_is_never_read_through_a_symbolic_link(env: dict[str, str], tmp_path: Path) -> None:
    data = Path(env["TOTP_SERVICE_DATA_DIR"])
    assert run_command(env, "init").code == 0
    real = tmp_path / "real.key"
    (data / "master.key").rename(real)
    (data / "master.key").symlink_to(real)
    run_command(env, "secret", "list").one_line_error("key file", "is a symbolic link")


def test_rotate_key_new_key_file_through_a_link_or_into_no_folder_is_one_line(env: dict[str, str],
                                                                             tmp_path: Path) -> None:
    assert run_command(env, "init").code == 0
    (tmp_path / "new.key").symlink_to(tmp_path / "elsewhere.key")
    run_command(env, "rotate-key", "--new-key-file", str(tmp_path / "new.key")).one_line_error(
        "key file", "is a symbolic link")
    run_command(env, "rotate-key", "--new-key-file", str(tmp_path / "no" / "new.key")).one_line_error(
        "cannot create key file", "No such file or directory")
    assert not (tmp_path / "elsewhere.key").exists()


def test_a_dangling_key_file_link_at_init_is_one_line(env: dict[str, str], tmp_path: Path) -> None:
    data = Path(env["TOTP_SERVICE_DATA_DIR"])
    data.mkdir(mode=0o700)
    (data / "master.key").symlink_to(tmp_path / "nowhere.key")
    run_command(env, "init").one_line_error("key file", "is a symbolic link")
    assert not (tmp_path / "nowhere.key").exists()


@as_root
def test_data_dir_through_a_symlink_is_judged_by_its_target_and_never_chmodded(tmp_path: Path) -> None:
    target = tmp_path / "someone-elses"
    target.mkdir(mode=0o755)
    os.chown(target, NOBODY, NOBODY)
    link = tmp_path / "link"
    link.symlink_to(target)
    run_command(command_env(link, tmp_path), "init").one_line_error("belongs to uid")
    assert _mode(target) == 0o755 and list(target.iterdir()) == []
    mine = tmp_path / "mine"
    mine.mkdir(mode=0o750)
    (tmp_path / "mylink").symlink_to(mine)
    assert run_command(command_env(tmp_path / "mylink", tmp_path), "init").code == 0
    assert (mine / "totp.db").exists() and _mode(mine) == 0o750


def _as_nobody(shared_tmp: Path, data: Path, *args: str) -> Result:
    return run_command(command_env(data, shared_tmp), *args, user=NOBODY)


def _give(path: Path) -> None:
    os.chown(path, NOBODY, NOBODY)


@as_root
def test_init_in_a_read_only_or_uncreatable_folder_is_one_line(shared_tmp: Path) -> None:
    read_only = shared_tmp / "ro"
    read_only.mkdir(mode=0o500)
    _give(read_only)
    _as_nobody(shared_tmp, read_only, "init").one_line_error(f"data directory {read_only} is read-only",
                                                             f"chmod 700 {read_only}")
    _as_nobody(shared_tmp, read_only / "data", "init").one_line_error(
        f"cannot create data directory {read_only / 'data'}: permission denied")


@as_root
def test_container_bind_mount_not_owned_by_the_image_user(shared_tmp: Path) -> None:
    """`docker run -v $PWD/data:/data` with the host folder root's (or a login user's), image user 10001."""
    for owner, hint in ((0, f"chown {NOBODY}:{NOBODY}"), (1000, "docker run --user 1000:1000")):
        host_folder = shared_tmp / f"owned-by-{owner}"
        host_folder.mkdir(mode=0o755)
        os.chown(host_folder, owner, owner)
        result = _as_nobody(shared_tmp, host_folder, "init")
        result.one_line_error(f"belongs to uid {owner}, not to uid {NOBODY}", hint, "bind mount")
        assert _mode(host_folder) == 0o755
    usable = shared_tmp / "owned-by-image-user"
    usable.mkdir(mode=0o755)
    _give(usable)
    started = _as_nobody(shared_tmp, usable, "init")
    assert started.code == 0, started.err  # a folder the user owns is used as it is (0755 kept)
    assert _as_nobody(shared_tmp, usable, "secret", "add", "a", "--secret", B32).code == 0
    assert _mode(usable) == 0o755 and _mode(usable / "master.key") == 0o600
