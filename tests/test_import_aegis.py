"""Aegis vaults, plain and encrypted, built here with the scheme in Aegis's docs/vault.md."""

from __future__ import annotations

import base64
import json

import pytest

from totp_service.imports import aegis
from totp_service.imports.detect import detect
from totp_service.imports.errors import EntryError, ImportFileError, PasswordRequired, WrongPassword

from import_fixtures import (
    PASSWORD, aegis_encrypted, aegis_plain, assert_no_secret, check_entries, check_hotp_unsupported,
)
from import_fuzz import fuzz


def test_plain_vault() -> None:
    data = aegis_plain(hotp=True)
    assert detect(data) == "aegis"
    entries = aegis.read(data)
    check_entries(entries)
    check_hotp_unsupported(entries)


def test_encrypted_vault_with_the_documented_parameters() -> None:
    data = aegis_encrypted()  # scrypt N=2^15, r=8, p=1 as the app writes it
    assert detect(data) == "aegis"
    check_entries(aegis.read(data, PASSWORD))


def test_password_is_asked_for_only_when_needed() -> None:
    asked: list[int] = []

    def ask() -> str:
        asked.append(1)
        return PASSWORD

    aegis.read(aegis_plain(), ask)
    assert not asked
    check_entries(aegis.read(aegis_encrypted(n=2**10), ask))
    assert asked == [1]


def test_the_password_slot_is_found_among_others() -> None:
    check_entries(aegis.read(aegis_encrypted(n=2**10, decoy_slot=True), PASSWORD))


def test_wrong_or_missing_password() -> None:
    data = aegis_encrypted(n=2**10)
    with pytest.raises(WrongPassword) as wrong:
        aegis.read(data, "not it")
    assert "wrong password" in str(wrong.value)
    assert_no_secret(str(wrong.value), password="not it")
    with pytest.raises(PasswordRequired):
        aegis.read(data)


def test_tampered_database_is_not_a_wrong_password() -> None:
    vault = json.loads(aegis_encrypted(n=2**10))
    db = bytearray(base64.b64decode(vault["db"]))
    db[5] ^= 1
    vault["db"] = base64.b64encode(bytes(db)).decode()
    with pytest.raises(ImportFileError, match="changed after it was written") as error:
        aegis.read(json.dumps(vault).encode(), PASSWORD)
    assert not isinstance(error.value, WrongPassword)


@pytest.mark.parametrize("cut", [10, 200, -40])
def test_truncated_vault(cut: int) -> None:
    for data in (aegis_plain(), aegis_encrypted(n=2**10)):
        with pytest.raises(ImportFileError):
            aegis.read(data[:cut], PASSWORD)


def test_bad_entry_names_its_position() -> None:
    vault = json.loads(aegis_plain())
    vault["db"]["entries"][1]["info"]["secret"] = "not base32!"
    with pytest.raises(EntryError) as error:
        aegis.read(json.dumps(vault).encode())
    assert str(error.value).startswith("entry 2 (AWS:ops-bot): ")


def test_crafted_scrypt_costs_are_refused() -> None:
    vault = json.loads(aegis_encrypted(n=2**10))
    vault["header"]["slots"][0]["n"] = 2**30
    with pytest.raises(ImportFileError, match="out of range"):
        aegis.read(json.dumps(vault).encode(), PASSWORD)


def test_steam_and_other_kinds_are_listed_unsupported() -> None:
    vault = json.loads(aegis_plain())
    vault["db"]["entries"].append({"type": "steam", "name": "gamer", "issuer": "Steam",
                                   "info": {"secret": "JBSWY3DPEHPK3PXP", "algo": "SHA1", "digits": 5}})
    vault["db"]["entries"].append({"type": "motp", "name": "m", "issuer": "M", "info": {"secret": "AA", "pin": "1"}})
    *_, steam, motp = aegis.read(json.dumps(vault).encode())
    assert steam.spec is None and "Steam" in (steam.unsupported or "")
    assert motp.spec is None and motp.kind == "motp"


def test_random_inputs_raise_only_import_errors() -> None:
    seeds = [aegis_plain(hotp=True), aegis_encrypted(n=2**4)]
    outcome = fuzz(aegis.read, seeds, count=2500, password=PASSWORD)
    assert outcome["parsed"] > 100 and outcome["refused"] > 100
