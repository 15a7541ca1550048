"""2FAS backups, plain and encrypted with the Android app's scheme (PBKDF2-SHA256 x 10,000, AES-GCM)."""

from __future__ import annotations

import base64
import json

import pytest

from totp_service.imports import twofas
from totp_service.imports.detect import detect
from totp_service.imports.errors import EntryError, ImportFileError, PasswordRequired, WrongPassword

from import_fixtures import (
    PASSWORD, assert_no_secret, check_entries, check_hotp_unsupported, twofas_encrypted, twofas_plain,
)
from import_fuzz import fuzz


def test_plain_backup() -> None:
    data = twofas_plain(hotp=True)
    assert detect(data) == "2fas"
    entries = twofas.read(data)
    check_entries(entries)
    check_hotp_unsupported(entries)


def test_encrypted_backup() -> None:
    data = twofas_encrypted(hotp=True)
    assert detect(data) == "2fas"
    entries = twofas.read(data, PASSWORD)
    check_entries(entries)
    check_hotp_unsupported(entries)


def test_wrong_or_missing_password() -> None:
    data = twofas_encrypted()
    with pytest.raises(WrongPassword) as wrong:
        twofas.read(data, "Tr0ub4dor&3")
    assert_no_secret(str(wrong.value), password="Tr0ub4dor&3")
    with pytest.raises(PasswordRequired):
        twofas.read(data)


def test_tampered_services_are_told_apart_from_a_wrong_password() -> None:
    backup = json.loads(twofas_encrypted())
    ciphertext, salt, iv = backup["servicesEncrypted"].split(":")
    raw = bytearray(base64.b64decode(ciphertext))
    raw[3] ^= 0x40
    backup["servicesEncrypted"] = ":".join([base64.b64encode(bytes(raw)).decode(), salt, iv])
    with pytest.raises(ImportFileError, match="changed after it was written") as error:
        twofas.read(json.dumps(backup).encode(), PASSWORD)
    assert not isinstance(error.value, WrongPassword)


def test_truncated_backup() -> None:
    for data in (twofas_plain(), twofas_encrypted()):
        for cut in (1, len(data) // 2, len(data) - 3):
            with pytest.raises(ImportFileError):
                twofas.read(data[:cut], PASSWORD)


def test_bad_entry_names_its_position() -> None:
    backup = json.loads(twofas_plain())
    backup["services"][2]["secret"] = ""
    with pytest.raises(EntryError, match=r"^service 3 \(Bank:\+15550100\): has no secret"):
        twofas.read(json.dumps(backup).encode())


def test_steam_is_listed_unsupported() -> None:
    backup = json.loads(twofas_plain())
    backup["services"][0]["otp"]["tokenType"] = "STEAM"
    first = twofas.read(json.dumps(backup).encode())[0]
    assert first.spec is None and first.kind == "steam"


def test_random_inputs_raise_only_import_errors() -> None:
    outcome = fuzz(twofas.read, [twofas_plain(hotp=True)], count=2500)
    assert outcome["parsed"] > 100 and outcome["refused"] > 100
    encrypted = fuzz(twofas.read, [twofas_encrypted()], count=300, seed=14, password=PASSWORD)
    assert encrypted["refused"] > 100
