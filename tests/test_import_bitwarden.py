"""Bitwarden unencrypted exports: JSON (login.totp) and CSV (login_totp), built here."""

from __future__ import annotations

import json

import pytest

from totp_service.imports import bitwarden
from totp_service.imports.detect import detect
from totp_service.imports.errors import EntryError, ImportFileError

from import_fixtures import ACCOUNTS, bitwarden_csv, bitwarden_json, check_entries, check_hotp_unsupported
from import_fuzz import fuzz


def test_json_export_with_uris_and_bare_secrets() -> None:
    data = bitwarden_json(hotp=True, steam=True)
    assert detect(data) == "bitwarden"
    entries = bitwarden.read(data)
    check_entries(entries)  # logins without a TOTP and secure notes are passed over
    hotp, steam = [e for e in entries if e.spec is None]
    assert hotp.kind == "hotp" and steam.kind == "steam" and "Steam" in (steam.unsupported or "")


def test_bare_secret_takes_item_name_and_username() -> None:
    entry = bitwarden.read(bitwarden_json(ACCOUNTS[:1] * 2))[1]  # the second is written as a bare secret
    assert (entry.issuer, entry.account, entry.spec.algorithm) == ("GitHub", "alice@example.com", "SHA1")


def test_csv_export() -> None:
    data = bitwarden_csv(hotp=True)
    assert detect(data) == "bitwarden-csv"
    entries = bitwarden.read_csv(data)
    check_entries(entries)
    check_hotp_unsupported(entries)


def test_encrypted_json_export_is_refused_plainly() -> None:
    data = json.dumps({"encrypted": True, "passwordProtected": True, "salt": "c2FsdA==", "kdfType": 0,
                       "kdfIterations": 600000, "data": "2.abc|def|ghi"}).encode()
    assert detect(data) == "bitwarden"
    with pytest.raises(ImportFileError, match="encrypted Bitwarden JSON export"):
        bitwarden.read(data)


def test_bad_entries_name_their_position() -> None:
    export = json.loads(bitwarden_json())
    export["items"][1]["login"]["totp"] = "otpauth://totp/X:y?secret=1!"
    with pytest.raises(EntryError, match=r"^item 2 \(X:y\): the secret is not valid base32"):
        bitwarden.read(json.dumps(export).encode())
    rows = bitwarden_csv().decode().replace("mfrggzdfmztwq2lknnwg23tpobyxe43u", "not base32 at all!")
    rows = rows.replace(ACCOUNTS[2].secret, "not base32 at all!")
    with pytest.raises(EntryError, match=r"^row 4 \(Bank:\+15550100\): "):
        bitwarden.read_csv(rows.encode())


def test_truncated_files() -> None:
    with pytest.raises(ImportFileError):
        bitwarden.read(bitwarden_json()[:-5])
    with pytest.raises(ImportFileError):
        bitwarden.read_csv(b"folder,favorite,type,name\n")


def test_random_inputs_raise_only_import_errors() -> None:
    outcome = fuzz(bitwarden.read, [bitwarden_json(hotp=True, steam=True)], count=2500)
    assert outcome["parsed"] > 100 and outcome["refused"] > 100
    outcome = fuzz(bitwarden.read_csv, [bitwarden_csv(hotp=True)], count=2500, seed=14)
    assert outcome["parsed"] > 100 and outcome["refused"] > 100
