"""FreeOTP+ JSON exports (tokens with signed-byte secrets), built here."""

from __future__ import annotations

import json

import pytest

from totp_service.imports import freeotp
from totp_service.imports.detect import detect
from totp_service.imports.errors import EntryError, ImportFileError

from import_fixtures import check_entries, check_hotp_unsupported, freeotp_json
from import_fuzz import fuzz


def test_export() -> None:
    data = freeotp_json(hotp=True)
    assert detect(data) == "freeotp"
    entries = freeotp.read(data)
    check_entries(entries)
    check_hotp_unsupported(entries)


def test_renamed_token_uses_the_names_shown_in_the_app() -> None:
    export = json.loads(freeotp_json())
    export["tokens"][0].update(issuerAlt="GitHub Work", labelAlt="alice")
    first = freeotp.read(json.dumps(export).encode())[0]
    assert (first.issuer, first.account) == ("GitHub Work", "alice")


def test_steam_token_is_listed_unsupported() -> None:
    export = json.loads(freeotp_json())
    export["tokens"][0].update(issuerExt="Steam", digits=5)
    first = freeotp.read(json.dumps(export).encode())[0]
    assert first.spec is None and first.kind == "steam"


def test_bad_entry_and_truncated_file() -> None:
    export = json.loads(freeotp_json())
    export["tokens"][1]["secret"] = [1, 2, 300]
    with pytest.raises(EntryError, match=r"^token 2 \(AWS:ops-bot\): secret is not a list of bytes"):
        freeotp.read(json.dumps(export).encode())
    with pytest.raises(ImportFileError):
        freeotp.read(freeotp_json()[:100])


def test_random_inputs_raise_only_import_errors() -> None:
    outcome = fuzz(freeotp.read, [freeotp_json(hotp=True)], count=2500)
    assert outcome["parsed"] > 100 and outcome["refused"] > 100
