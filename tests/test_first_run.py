"""The first ten minutes as a newcomer lives them: the real command in a subprocess or on a terminal."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers_cli import B32, REPO, Result, Terminal, command_env, run_command

PROMPT = "(input hidden)"


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return command_env(tmp_path / "data", tmp_path)


@pytest.fixture
def ready(env: dict[str, str]) -> dict[str, str]:
    assert run_command(env, "init").code == 0
    return env


def _data_dir(env: dict[str, str]) -> Path:
    return Path(env["TOTP_SERVICE_DATA_DIR"])


# --- 1. pasting a secret --------------------------------------------------------------------


def test_stdin_on_a_terminal_prompts_hides_the_secret_and_enter_ends_it(ready: dict[str, str]) -> None:
    terminal = Terminal(ready, "secret", "add", "alice@example.com", "--stdin")
    terminal.read_until(PROMPT)
    terminal.type(B32 + "\r")  # Enter as a terminal sends it; no Ctrl-D
    code, screen = terminal.finish()
    assert code == 0, screen
    assert "stored alice@example.com" in screen
    assert B32 not in screen and B32.lower() not in screen  # never echoed
    assert run_command(ready, "code", "alice@example.com", "--at", "59").out.startswith("996554")


def test_two_pasted_lines_on_a_terminal_are_refused_and_nothing_is_stored(ready: dict[str, str]) -> None:
    terminal = Terminal(ready, "secret", "add", "bob", "--stdin")
    terminal.read_until(PROMPT)
    terminal.type(f"{B32}\n{B32}\n")
    code, screen = terminal.finish()
    assert code == 2, screen
    assert "one line" in screen and "nothing was stored" in screen and "Traceback" not in screen
    assert B32 not in screen
    assert json.loads(run_command(ready, "secret", "list", "--json").out) == []


def test_stdin_from_a_pipe_reads_everything_without_a_prompt(ready: dict[str, str]) -> None:
    result = run_command(ready, "secret", "add", "carol", "--stdin", stdin=f"otpauth://totp/x?secret={B32}\n")
    assert result.code == 0, result.err
    assert PROMPT not in result.out + result.err


# --- 2 and 3. init on a folder it cannot use; a lost key; a passphrase store -------------------


def test_init_where_a_file_is_in_the_way(tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("x")
    run_command(command_env(tmp_path / "afile" / "data", tmp_path), "init").one_line_error(
        "a file is in the way", "--data-dir")
    run_command(command_env(tmp_path / "afile", tmp_path), "init").one_line_error(
        "is a file, not a folder", "--data-dir")


def test_lost_key_file_says_restore_from_backup_never_init(ready: dict[str, str]) -> None:
    (_data_dir(ready) / "master.key").unlink()
    for args in (("secret", "list"), ("init",)):
        result = run_command(ready, *args)
        result.one_line_error("missing", "restore it from your backup")
        assert "run `totp-service init`" not in result.err
    assert not (_data_dir(ready) / "master.key").exists()  # init made no new key


def test_passphrase_store_without_the_passphrase_says_so(env: dict[str, str]) -> None:
    assert run_command({**env, "TOTP_SERVICE_PASSPHRASE": "correct horse battery"}, "init").code == 0
    for args in (("secret", "list"), ("init",)):
        result = run_command(env, *args)
        result.one_line_error("protected by a passphrase", "TOTP_SERVICE_PASSPHRASE")
        assert "init" not in result.err
    wrong = run_command({**env, "TOTP_SERVICE_PASSPHRASE": "wrong horse"}, "secret", "list")
    wrong.one_line_error("TOTP_SERVICE_PASSPHRASE does not open")


def test_wrong_master_key_variable_says_it_overrode_the_key_file(ready: dict[str, str]) -> None:
    other = "A" * 43 + "="
    result = run_command({**ready, "TOTP_SERVICE_MASTER_KEY": other}, "secret", "list")
    result.one_line_error("TOTP_SERVICE_MASTER_KEY does not open", "overrides the key file",
                          str(_data_dir(ready) / "master.key"))


def test_no_store_at_all_suggests_init(env: dict[str, str]) -> None:
    run_command(env, "secret", "list").one_line_error("run `totp-service init`")


# --- 4. global flags anywhere -----------------------------------------------------------------


def test_data_dir_and_config_work_after_the_subcommand(tmp_path: Path) -> None:
    env = command_env(None, tmp_path)
    data = tmp_path / "elsewhere"
    assert run_command(env, "init", "--data-dir", str(data)).code == 0
    added = run_command(env, "secret", "add", "dave", "--stdin", "--data-dir", str(data), stdin=B32)
    assert added.code == 0, added.err
    assert run_command(env, "code", "dave", "--at", "59", f"--data-dir={data}").out.startswith("996554")
    config = tmp_path / "c.yaml"
    config.write_text(f"data_dir: {data}\n")
    assert "dave" in run_command(env, "secret", "list", "--config", str(config)).out
    before = run_command(env, "--data-dir", str(data), "secret", "list")  # still works before it
    assert before.code == 0 and "dave" in before.out
    assert not (tmp_path / "xdg").exists()  # the default data dir was never touched


# --- 5. the qr extra ---------------------------------------------------------------------------


def test_qr_without_the_extra_names_a_command_that_works(ready: dict[str, str], tmp_path: Path) -> None:
    hide_zxing = "import runpy, sys; sys.modules['zxingcpp'] = None; runpy.run_module('totp_service', run_name='__main__')"
    result = run_command(ready, "secret", "add", "x", "--qr", str(tmp_path / "a.png"), python_args=("-c", hide_zxing))
    result.one_line_error("pip install '.[qr]'")
    assert "totp-service[qr]" not in result.err
    readme = (REPO / "README.md").read_text()
    assert "totp-service[qr]" not in readme and "pip install '.[qr]'" in readme


# --- 8. code --at ------------------------------------------------------------------------------


@pytest.mark.parametrize("value,fragment", [
    ("-5", "negative"), ("1764614400000", "milliseconds"), ("nan", "not a number"), ("inf", "not a number"),
    ("1e20", "milliseconds"), ("soon", "not a number"),
])
def test_code_at_takes_unix_seconds_only(ready: dict[str, str], value: str, fragment: str) -> None:
    assert run_command(ready, "secret", "add", "e", "--secret", B32).code == 0
    result = run_command(ready, "code", "e", f"--at={value}")
    result.one_line_error("--at", "unix seconds", fragment)
    assert result.code == 2


def test_code_at_accepts_seconds(ready: dict[str, str]) -> None:
    assert run_command(ready, "secret", "add", "e", "--secret", B32).code == 0
    assert run_command(ready, "code", "e", "--at", "59.5").out.startswith("996554")
    assert run_command(ready, "code", "e", "--at", "0").code == 0


# --- 6 and 7. the start-up line: admin API, key hygiene ----------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def startup_line(env: dict[str, str]) -> str:
    """Start `serve`, return its start-up line, stop it."""
    process = subprocess.Popen([sys.executable, "-m", "totp_service", "serve", "--port", str(_free_port())],
                               env=env, cwd=env["HOME"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = process.stderr.readline()
    finally:
        process.terminate()
        process.wait(timeout=15)
    return line


def test_startup_line_says_whether_the_admin_api_is_on_and_with_how_many_tokens(ready: dict[str, str]) -> None:
    assert "admin API off (no token)" in startup_line(ready)
    tokens = {"TOTP_SERVICE_ADMIN_TOKEN": "a" * 32, "TOTP_SERVICE_READER_TOKEN": "r" * 32}
    assert "admin API on (1 admin token, 1 reader token)" in startup_line({**ready, **tokens})


def test_key_file_and_database_readable_by_others_are_unsafe(ready: dict[str, str]) -> None:
    data = _data_dir(ready)
    assert "UNSAFE" not in startup_line(ready)
    for name in ("master.key", "totp.db"):
        (data / name).chmod(0o644)
    line = startup_line(ready)
    assert f"UNSAFE key file {data / 'master.key'} is readable by other users (chmod 600 it)" in line
    assert f"UNSAFE database {data / 'totp.db'} is readable by other users (chmod 600 it)" in line
    listed = run_command(ready, "secret", "list")  # every command says it too, and still works
    assert listed.code == 0 and listed.err.count("UNSAFE") == 2
    config = Path(ready["HOME"]) / "strict.yaml"
    config.write_text("refuse_readable_files: true\n")
    run_command(ready, "secret", "list", "--config", str(config)).one_line_error(
        "readable by other users", "refuse_readable_files")


# --- 6. README's admin API examples, run as written ---------------------------------------------


def _readme_block(heading: str) -> str:
    section = (REPO / "README.md").read_text().split(f"## {heading}\n", 1)[1].split("\n## ", 1)[0]
    return "\n".join(re.findall(r"```sh\n(.*?)```", section, re.S))


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_readme_admin_api_examples_work_as_written(ready: dict[str, str]) -> None:
    port = _free_port()
    token = "t" * 32
    env = {**ready, "TOTP_SERVICE_ADMIN_TOKEN": token}
    server = subprocess.Popen([sys.executable, "-m", "totp_service", "serve", "--port", str(port)], env=env,
                              cwd=env["HOME"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        assert "admin API on" in server.stderr.readline()
        script = _readme_block("The admin API").replace("http://127.0.0.1:8088", f"http://127.0.0.1:{port}")
        assert script.count("curl") >= 4
        done = subprocess.run(["bash", "-euo", "pipefail", "-c", script], env=env,
                              capture_output=True, text=True, timeout=60)
    finally:
        server.terminate()
        server.wait(timeout=15)
    assert done.returncode == 0, done.stdout + done.stderr
    answers, rest, decoder = [], done.stdout.strip(), json.JSONDecoder()
    while rest:  # curl prints each JSON answer without a newline
        answer, end = decoder.raw_decode(rest)
        answers.append(answer)
        rest = rest[end:].lstrip()
    assert any(a.get("identifier") == "alice@example.com" and "algorithm" in a for a in answers)  # secret made
    assert any(a.get("kind") == "run" for a in answers)  # binding made
    assert any(re.fullmatch(r"\d{6}", a.get("code", "")) for a in answers)  # code read
    assert any(a.get("entries") for a in answers)  # audit read
    assert B32 not in done.stdout  # only the request carried it
