"""Export files built in the test, encrypted with each app's documented scheme (no copied fixtures).

Every builder takes ACCOUNTS (three TOTP accounts across SHA1/256/512, 6/8 digits, 30/60 s) and
returns the bytes the app would write.
"""

from __future__ import annotations

import base64
import json
import os
import random
import uuid
from dataclasses import dataclass

import pyotp
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.pbkdf2 import PBKDF2HMAC
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

PASSWORD = "correct horse battery staple ü"


@dataclass(frozen=True)
class Account:
    issuer: str
    account: str
    secret: str  # base32
    algorithm: str = "SHA1"
    digits: int = 6
    period: int = 30

    @property
    def raw(self) -> bytes:
        return base64.b32decode(self.secret + "=" * (-len(self.secret) % 8))

    def code(self, at: float) -> str:
        digest = {"SHA1": "sha1", "SHA256": "sha256", "SHA512": "sha512"}[self.algorithm]
        return pyotp.TOTP(self.secret, digits=self.digits, digest=digest, interval=self.period).at(int(at))


ACCOUNTS = (
    Account("GitHub", "alice@example.com", "JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP"),
    Account("AWS", "ops-bot", "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ", "SHA256", 8, 60),
    Account("Bank", "+15550100", "MFRGGZDFMZTWQ2LKNNWG23TPOBYXE43U", "SHA512", 8, 30),
)
HOTP = Account("Counter", "dave", "KRSXG5CTMVRXEZLUKN2XAZLSKNSWG4TF")


def gcm(key: bytes, plain: bytes) -> tuple[bytes, bytes, bytes]:
    """(nonce, ciphertext, tag) as apps store them apart."""
    nonce = os.urandom(12)
    sealed = AESGCM(key).encrypt(nonce, plain, None)
    return nonce, sealed[:-16], sealed[-16:]


# --- Aegis (docs/vault.md) ----------------------------------------------------------------


def aegis_content(accounts=ACCOUNTS, hotp: bool = False) -> dict:
    entries = [{
        "type": "totp", "uuid": str(uuid.uuid4()), "name": a.account, "issuer": a.issuer, "note": "",
        "favorite": False, "icon": None, "icon_mime": None, "icon_hash": None, "groups": [],
        "info": {"secret": a.secret, "algo": a.algorithm, "digits": a.digits, "period": a.period},
    } for a in accounts]
    if hotp:
        entries.append({"type": "hotp", "uuid": str(uuid.uuid4()), "name": HOTP.account, "issuer": HOTP.issuer,
                        "info": {"secret": HOTP.secret, "algo": "SHA1", "digits": 6, "counter": 4}})
    return {"version": 3, "entries": entries, "groups": []}


def aegis_plain(accounts=ACCOUNTS, hotp: bool = False) -> bytes:
    return json.dumps({"version": 1, "header": {"slots": None, "params": None},
                       "db": aegis_content(accounts, hotp)}, indent=4).encode()


def aegis_encrypted(password: str = PASSWORD, accounts=ACCOUNTS, hotp: bool = False, n: int = 2**15,
                    decoy_slot: bool = False) -> bytes:
    master_key = os.urandom(32)
    slots = []
    if decoy_slot:  # a biometric slot and a password slot for another password come first
        nonce, key, tag = gcm(os.urandom(32), master_key)
        slots.append({"type": 2, "uuid": str(uuid.uuid4()), "key": key.hex(),
                      "key_params": {"nonce": nonce.hex(), "tag": tag.hex()}})
        slots.append(_aegis_password_slot("another password", master_key, n))
    slots.append(_aegis_password_slot(password, master_key, n))
    nonce, ciphertext, tag = gcm(master_key, json.dumps(aegis_content(accounts, hotp)).encode())
    return json.dumps({"version": 1, "header": {"slots": slots, "params": {"nonce": nonce.hex(), "tag": tag.hex()}},
                       "db": base64.b64encode(ciphertext).decode()}).encode()


def _aegis_password_slot(password: str, master_key: bytes, n: int) -> dict:
    salt = os.urandom(32)
    wrapping = Scrypt(salt=salt, length=32, n=n, r=8, p=1).derive(password.encode())
    nonce, key, tag = gcm(wrapping, master_key)
    return {"type": 1, "uuid": str(uuid.uuid4()), "key": key.hex(),
            "key_params": {"nonce": nonce.hex(), "tag": tag.hex()}, "n": n, "r": 8, "p": 1, "salt": salt.hex(),
            "repaired": True, "is_backup": False}


# --- 2FAS (the Android app's BackupCipher: PBKDF2-HMAC-SHA256 x 10,000 + AES-GCM) ------------------

TWOFAS_REFERENCE = "a fixed text the app encrypts beside the services"


def twofas_services(accounts=ACCOUNTS, hotp: bool = False) -> list[dict]:
    services = [{
        "name": a.issuer, "secret": a.secret, "updatedAt": 1700000000000, "serviceTypeID": None,
        "otp": {"link": None, "label": f"{a.issuer}:{a.account}", "account": a.account, "issuer": a.issuer,
                "digits": a.digits, "period": a.period, "algorithm": a.algorithm, "tokenType": "TOTP",
                "source": "Manual"},
        "order": {"position": i}, "badge": None, "icon": None, "groupId": None,
    } for i, a in enumerate(accounts)]
    if hotp:
        services.append({"name": HOTP.issuer, "secret": HOTP.secret, "updatedAt": 0, "order": {"position": 9},
                         "otp": {"account": HOTP.account, "digits": 6, "algorithm": "SHA1", "counter": 3,
                                 "tokenType": "HOTP"}})
    return services


def twofas_plain(accounts=ACCOUNTS, hotp: bool = False) -> bytes:
    return json.dumps({"services": twofas_services(accounts, hotp), "groups": [], "updatedAt": 1700000000000,
                       "schemaVersion": 4, "appVersionCode": 5000000, "appVersionName": "5.0.0",
                       "appOrigin": "android"}).encode()


def twofas_seal(password: str, plain: bytes, salt: bytes) -> str:
    key = PBKDF2HMAC(algorithm=hashes.SHA256(), length=32, salt=salt, iterations=10_000).derive(password.encode())
    iv = os.urandom(12)
    sealed = AESGCM(key).encrypt(iv, plain, None)
    return ":".join(base64.b64encode(x).decode() for x in (sealed, salt, iv))


def twofas_encrypted(password: str = PASSWORD, accounts=ACCOUNTS, hotp: bool = False) -> bytes:
    salt = os.urandom(256)
    plain = json.dumps(twofas_services(accounts, hotp)).encode()
    return json.dumps({"services": [], "groups": [], "updatedAt": 1700000000000, "schemaVersion": 4,
                       "appVersionCode": 5000000, "appVersionName": "5.0.0", "appOrigin": "android",
                       "servicesEncrypted": twofas_seal(password, plain, salt),
                       "reference": twofas_seal(password, TWOFAS_REFERENCE.encode(), salt)}).encode()


# --- andOTP (BackupHelper/EncryptionHelper: iterations | salt | nonce | ciphertext+tag) ----------


def andotp_entries(accounts=ACCOUNTS, hotp: bool = False) -> list[dict]:
    entries = [{"secret": a.secret, "issuer": a.issuer, "label": a.account, "digits": a.digits, "type": "TOTP",
                "algorithm": a.algorithm, "thumbnail": "Default", "last_used": 0, "used_frequency": 0,
                "period": a.period, "tags": ["work"]} for a in accounts]
    if hotp:
        entries.append({"secret": HOTP.secret, "issuer": HOTP.issuer, "label": HOTP.account, "digits": 6,
                        "type": "HOTP", "algorithm": "SHA1", "counter": 7, "tags": []})
    return entries


def andotp_plain(accounts=ACCOUNTS, hotp: bool = False) -> bytes:
    return json.dumps(andotp_entries(accounts, hotp)).encode()


def andotp_encrypted(password: str = PASSWORD, accounts=ACCOUNTS, hotp: bool = False,
                     iterations: int | None = None) -> bytes:
    iterations = iterations or random.randint(140_000, 160_000)
    salt = os.urandom(12)
    key = PBKDF2HMAC(algorithm=hashes.SHA1(), length=32, salt=salt, iterations=iterations).derive(password.encode())
    nonce = os.urandom(12)
    sealed = AESGCM(key).encrypt(nonce, andotp_plain(accounts, hotp), None)
    return iterations.to_bytes(4, "big") + salt + nonce + sealed


def andotp_encrypted_legacy(password: str = PASSWORD, accounts=ACCOUNTS) -> bytes:
    digest = hashes.Hash(hashes.SHA256())
    digest.update(password.encode())
    nonce = os.urandom(12)
    return nonce + AESGCM(digest.finalize()).encrypt(nonce, andotp_plain(accounts), None)


# --- Bitwarden (unencrypted JSON and CSV exports) -----------------------------------------------


def _bitwarden_totp(a: Account, style: int) -> str:
    if style == 0 or a.algorithm != "SHA1" or a.digits != 6 or a.period != 30:
        return (f"otpauth://totp/{a.issuer}:{a.account}?secret={a.secret}&issuer={a.issuer}"
                f"&algorithm={a.algorithm}&digits={a.digits}&period={a.period}")
    return a.secret.lower()  # a bare base32 secret, as Bitwarden keeps a typed-in key


def bitwarden_json(accounts=ACCOUNTS, hotp: bool = False, steam: bool = False) -> bytes:
    items = [{"id": str(uuid.uuid4()), "organizationId": None, "folderId": None, "type": 1, "reprompt": 0,
              "name": a.issuer, "notes": None, "favorite": False,
              "login": {"uris": [{"match": None, "uri": "https://example.com"}], "username": a.account,
                        "password": "hunter2", "totp": _bitwarden_totp(a, i % 2)}, "collectionIds": None}
             for i, a in enumerate(accounts)]
    items.append({"id": str(uuid.uuid4()), "type": 1, "name": "no totp here",
                  "login": {"username": "x", "password": "y", "totp": None}})
    items.append({"id": str(uuid.uuid4()), "type": 2, "name": "a secure note", "secureNote": {"type": 0}})
    if hotp:
        items.append({"type": 1, "name": HOTP.issuer, "login": {
            "username": HOTP.account, "totp": f"otpauth://hotp/{HOTP.issuer}:{HOTP.account}?secret={HOTP.secret}"}})
    if steam:
        items.append({"type": 1, "name": "Steam", "login": {"username": "gamer", "totp": f"steam://{HOTP.secret}"}})
    return json.dumps({"encrypted": False, "folders": [], "items": items}).encode()


def bitwarden_csv(accounts=ACCOUNTS, hotp: bool = False) -> bytes:
    import csv
    import io

    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["folder", "favorite", "type", "name", "notes", "fields", "reprompt", "login_uri",
                     "login_username", "login_password", "login_totp"])
    for i, a in enumerate(accounts):
        writer.writerow(["", "", "login", a.issuer, "a note,\nover two lines", "", "0", "https://example.com",
                         a.account, "pw", _bitwarden_totp(a, i % 2)])
    writer.writerow(["", "", "login", "plain login", "", "", "0", "", "bob", "pw", ""])
    if hotp:
        writer.writerow(["", "", "login", HOTP.issuer, "", "", "0", "", HOTP.account, "pw",
                         f"otpauth://hotp/{HOTP.issuer}:{HOTP.account}?secret={HOTP.secret}&counter=1"])
    return out.getvalue().encode()


# --- FreeOTP+ (legacy Token model written by Gson) ------------------------------------------------


def freeotp_json(accounts=ACCOUNTS, hotp: bool = False) -> bytes:
    def signed(raw: bytes) -> list[int]:
        return [b - 256 if b > 127 else b for b in raw]

    tokens = [{"algo": a.algorithm, "counter": 0, "digits": a.digits, "issuerExt": a.issuer, "issuerInt": a.issuer,
               "label": a.account, "period": a.period, "secret": signed(a.raw), "type": "TOTP"} for a in accounts]
    if hotp:
        tokens.append({"algo": "SHA1", "counter": 5, "digits": 6, "issuerExt": HOTP.issuer, "label": HOTP.account,
                       "period": 30, "secret": signed(HOTP.raw), "type": "HOTP"})
    order = [f"{t['issuerExt']}:{t['label']}" for t in tokens]
    return json.dumps({"tokenOrder": order, "tokens": tokens}).encode()


# --- 2FAuth (TwoFAccountExportCollection) -------------------------------------------------------


def twofauth_json(accounts=ACCOUNTS, hotp: bool = False) -> bytes:
    data = [{"otp_type": "totp", "account": a.account, "service": a.issuer, "icon": None, "icon_mime": None,
             "icon_file": None, "secret": a.secret, "digits": a.digits, "algorithm": a.algorithm.lower(),
             "period": a.period, "counter": None, "legacy_uri": ""} for a in accounts]
    if hotp:
        data.append({"otp_type": "hotp", "account": HOTP.account, "service": HOTP.issuer, "secret": HOTP.secret,
                     "digits": 6, "algorithm": "sha1", "period": None, "counter": 2})
    return json.dumps({"app": "2fauth_v5.4.0", "schema": 1, "datetime": "2026-12-01T10:00:00.000000Z",
                       "data": data}).encode()


# --- otpauth lines (and a Google Authenticator export line) ---------------------------------------


def otpauth_lines(accounts=ACCOUNTS, hotp: bool = False) -> bytes:
    lines = ["# exported by hand", ""]
    lines += [f"otpauth://totp/{a.issuer}:{a.account}?secret={a.secret}&algorithm={a.algorithm}"
              f"&digits={a.digits}&period={a.period}" for a in accounts]
    if hotp:
        lines.append(f"otpauth://hotp/{HOTP.issuer}:{HOTP.account}?secret={HOTP.secret}&counter=1")
    return ("\n".join(lines) + "\n").encode()


def google_migration(accounts=ACCOUNTS, hotp: bool = False) -> bytes:
    """otpauth-migration://offline?data=… with a MigrationPayload protobuf written field by field."""
    def varint(n: int) -> bytes:
        out = b""
        while True:
            low, n = n & 0x7F, n >> 7
            out += bytes([low | (0x80 if n else 0)])
            if not n:
                return out

    def field(number: int, value: bytes | int) -> bytes:
        if isinstance(value, int):
            return varint(number << 3) + varint(value)
        return varint(number << 3 | 2) + varint(len(value)) + value

    algorithms = {"SHA1": 1, "SHA256": 2, "SHA512": 3}
    payload = b""
    for a in accounts:  # Google's export knows only 30 s periods
        digits = {6: 1, 8: 2}[a.digits]
        payload += field(1, field(1, a.raw) + field(2, a.account.encode()) + field(3, a.issuer.encode())
                         + field(4, algorithms[a.algorithm]) + field(5, digits) + field(6, 2))
    if hotp:
        payload += field(1, field(1, HOTP.raw) + field(2, HOTP.account.encode()) + field(3, HOTP.issuer.encode())
                         + field(4, 1) + field(5, 1) + field(6, 1) + field(7, 3))
    data = base64.b64encode(payload + field(2, 1)).decode()
    return f"otpauth-migration://offline?data={data}\n".encode()


# --- checks shared by the per-format tests --------------------------------------------------------

CHECK_TIMES = (59, 1_111_111_109, 1_700_000_015, 2_000_000_000)


def check_entries(entries, accounts=ACCOUNTS) -> None:
    """The TOTP entries are exactly `accounts`, in order, and give pyotp's codes."""
    from totp_service.otp import code_at

    served = [e for e in entries if e.spec is not None]
    assert [(e.issuer, e.account) for e in served] == [(a.issuer, a.account) for a in accounts]
    for entry, account in zip(served, accounts):
        spec = entry.spec
        assert (spec.secret, spec.algorithm, spec.digits, spec.period) == (
            account.raw, account.algorithm, account.digits, account.period)
        for at in CHECK_TIMES:
            assert code_at(spec, at) == account.code(at)


def check_hotp_unsupported(entries) -> None:
    (unsupported,) = [e for e in entries if e.spec is None]
    assert unsupported.kind == "hotp" and "HOTP" in (unsupported.unsupported or "")
    assert (unsupported.issuer, unsupported.account) == (HOTP.issuer, HOTP.account)


def assert_no_secret(text: str, accounts=ACCOUNTS + (HOTP,), password: str | None = PASSWORD) -> None:
    for account in accounts:
        assert account.secret not in text and account.secret.lower() not in text
    if password:
        assert password not in text
