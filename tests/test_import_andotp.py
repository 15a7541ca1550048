"""andOTP backups: plain JSON and .json.aes built with andOTP's layout (iterations|salt|nonce|data)."""

from __future__ import annotations

import json

import pytest

from totp_service.imports import andotp
from totp_service.imports.detect import detect
from totp_service.imports.errors import EntryError, ImportFileError, PasswordRequired, WrongPassword

from import_fixtures import (
    PASSWORD, andotp_encrypted, andotp_encrypted_legacy, andotp_plain, assert_no_secret, check_entries,
    check_hotp_unsupported,
)
from import_fuzz import fuzz


def test_plain_backup() -> None:
    data = andotp_plain(hotp=True)
    assert detect(data) == "andotp"
    entries = andotp.read(data)
    check_entries(entries)
    check_hotp_unsupported(entries)


def test_encrypted_backup() -> None:
    data = andotp_encrypted(hotp=True)  # 140,000-160,000 iterations, as the app picks them
    assert detect(data) == "andotp"
    entries = andotp.read(data, PASSWORD)
    check_entries(entries)
    check_hotp_unsupported(entries)


def test_encrypted_backup_in_the_old_layout() -> None:
    check_entries(andotp.read(andotp_encrypted_legacy(), PASSWORD))


def test_wrong_or_missing_password() -> None:
    data = andotp_encrypted(iterations=1000)
    with pytest.raises(WrongPassword) as wrong:
        andotp.read(data, "hunter2")
    assert_no_secret(str(wrong.value), password="hunter2")
    with pytest.raises(PasswordRequired):
        andotp.read(data)


def test_tampered_and_truncated_files() -> None:
    data = bytearray(andotp_encrypted(iterations=1000))
    data[40] ^= 1
    with pytest.raises(ImportFileError):
        andotp.read(bytes(data), PASSWORD)
    for cut in (3, 20, 40, len(data) - 1):
        with pytest.raises(ImportFileError):
            andotp.read(bytes(data[:cut]), PASSWORD)


def test_crafted_iteration_counts_are_refused() -> None:
    data = andotp_encrypted(iterations=1000)
    with pytest.raises(ImportFileError):
        andotp.read((2**31 - 1).to_bytes(4, "big") + data[4:], PASSWORD)


def test_bad_entry_names_its_position() -> None:
    entries = json.loads(andotp_plain())
    entries[0]["digits"] = "six"
    with pytest.raises(EntryError, match=r"^entry 1: digits is not a whole number"):
        andotp.read(json.dumps(entries).encode())


def test_steam_is_listed_unsupported() -> None:
    entries = json.loads(andotp_plain())
    entries.append({"secret": "JBSWY3DPEHPK3PXP", "issuer": "Steam", "label": "gamer", "digits": 5, "type": "STEAM"})
    last = andotp.read(json.dumps(entries).encode())[-1]
    assert last.spec is None and last.kind == "steam"


def test_random_inputs_raise_only_import_errors() -> None:
    outcome = fuzz(andotp.read, [andotp_plain(hotp=True)], count=2500)
    assert outcome["parsed"] > 100 and outcome["refused"] > 100
    fuzz(andotp.read, [andotp_encrypted(iterations=1000)], count=300, seed=14, password=PASSWORD)
