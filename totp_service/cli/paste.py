"""Reading one pasted secret from a terminal: a prompt, no echo, Enter ends it, one line only.

Why not `getpass`: a paste of two lines would leave the second in the terminal's queue, where
the shell then runs it as a command (a secret in the shell's history). What arrives right behind
the first line is read here, thrown away, and refused.
"""

from __future__ import annotations

import os
import select
import sys
import termios
from typing import TextIO

PROMPT = "Paste the otpauth:// URI or base32 secret and press Enter (input hidden): "
_MORE_INPUT_WAIT_SECONDS = 0.2  # a paste's lines arrive together; a person's second line does not


class PasteError(Exception):
    """What was pasted cannot be taken; the message never holds the pasted text."""


def _read_available(fd: int, wait: float) -> bytes:
    data = b""
    while select.select([fd], [], [], wait)[0]:
        chunk = os.read(fd, 4096)
        if not chunk:
            break
        data += chunk
        wait = 0.05
    return data


def read_pasted_line(stdin: TextIO = sys.stdin, prompt_to: TextIO = sys.stderr) -> str:
    """One line typed or pasted on the terminal `stdin`, echo off while it is read."""
    fd = stdin.fileno()
    saved = termios.tcgetattr(fd)
    quiet = termios.tcgetattr(fd)
    quiet[3] &= ~(termios.ECHO | termios.ECHONL)  # canonical mode kept: Enter ends the line
    termios.tcsetattr(fd, termios.TCSADRAIN, quiet)  # before the prompt: what follows it is never shown
    try:
        prompt_to.write(PROMPT)
        prompt_to.flush()
        line = b""
        while not line.endswith(b"\n"):
            chunk = os.read(fd, 4096)
            if not chunk:  # Ctrl-D
                break
            line += chunk
        extra = _read_available(fd, _MORE_INPUT_WAIT_SECONDS) if line.endswith(b"\n") else b""
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)
        prompt_to.write("\n")
        prompt_to.flush()
    if extra.strip():
        raise PasteError("paste one line only (a second line arrived): nothing was stored")
    try:
        return line.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise PasteError("the pasted text is not UTF-8: nothing was stored") from None
