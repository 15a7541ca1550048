"""The fuzz pass (issue 11): seeded random inputs against the pull endpoint (both of serve's
front ends, HTTP and raw sockets), the admin API, and every importer behind the one `imports`
entry. What it asserts, whatever the input: no 5xx, no traceback in any log, no code for a
request without a valid signature.

CI runs a small budget. A full run (>= 10,000 pull, 5,000 admin, 30,000 importer inputs):
    TOTP_FUZZ=full python -m pytest tests/test_fuzz.py -s -p no:cacheprovider
Another seed: TOTP_FUZZ_SEED=N. The figures are printed (with -s) per part.
"""

from __future__ import annotations

import json
import logging
import os
import random
import socket
import time
from collections import Counter
from collections.abc import Iterator
from urllib.parse import quote, urlsplit

import httpx
import pytest

import import_fixtures as fx
from import_fuzz import mutate_bytes, mutate_json
from totp_service import imports, signing
from totp_service.identifiers import normalize_identifier
from totp_service.store import crypto
from totp_service.imports.errors import ImportFileError
from tests import helpers_app
from tests.helpers_app import ADMIN_TOKEN, READER_TOKEN, SKYVERN_KEY, add_secret, make_settings, running_service

FULL = os.environ.get("TOTP_FUZZ") == "full"
SEED = int(os.environ.get("TOTP_FUZZ_SEED", "11"))
PULL_INPUTS = 10_000 if FULL else 1_200  # per run, split over the two front ends, URL tokens on and off
ADMIN_INPUTS = 5_000 if FULL else 600
IMPORT_INPUTS = 30_000 if FULL else 3_000

IDENTIFIERS = ("alice@example.com", "bob", "+15550100")
ODD = ("", " ", "\u0000", "\ud800", "\udfff\ud800", "\ufffd", "é", "\u202e", "x" * 600, "%", "%ff", "%ED%A0%80",
       "../", "//", "?", "#", "\r\n", "NaN", "1e999", "-0", "wpid_", "wpid_ok", "tsk_1", "wr_1")
ODD_JSON = (b"NaN", b"Infinity", b"-Infinity", b"1e999", b"-1e999", b'"\\ud800"', b'"\\udfff"', b'"\\u0000"',
            b"[" * 2000 + b"]" * 2000, b'{"a":' * 3000 + b"1" + b"}" * 3000, b"12345678901234567890123",
            b'"' + b"x" * 5000 + b'"', b"true", b"null", b"[]", b"{}")


class LogWatch(logging.Handler):
    """Every log record that carries a traceback, or says an ASGI app raised."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.tracebacks: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info or "Traceback" in record.getMessage() or "Exception in ASGI" in record.getMessage():
            self.tracebacks.append(f"{record.name}: {record.getMessage()[:200]}")


@pytest.fixture
def log_watch() -> Iterator[LogWatch]:
    watch = LogWatch()
    root = logging.getLogger()
    root.addHandler(watch)  # at the root's level (WARNING): tracebacks are logged as errors
    try:
        yield watch
    finally:
        root.removeHandler(watch)


def _report(part: str, figures: dict[str, object]) -> None:
    print(f"\nfuzz {part} (seed {SEED}{', full run' if FULL else ''}): {json.dumps(figures, sort_keys=True)}")


def _odd_text(rng: random.Random) -> str:
    roll = rng.random()
    if roll < 0.4:
        return rng.choice(ODD)
    if roll < 0.7:
        return "".join(chr(rng.choice((rng.randrange(32, 127), rng.randrange(0x80, 0x3000), rng.randrange(0xD800, 0xE000),
                                       rng.randrange(0, 32))))
                       for _ in range(rng.randint(0, 40)))
    return rng.choice(IDENTIFIERS) + rng.choice(("", " ", "\t", "X", "%00"))


def _odd_json_value(rng: random.Random) -> bytes:
    roll = rng.random()
    if roll < 0.5:
        return rng.choice(ODD_JSON)
    return json.dumps(_odd_text(rng), ensure_ascii=rng.random() < 0.5).encode("utf-8", "surrogatepass")


# --- pulls ---------------------------------------------------------------------------------------


def _with_token(rng: random.Random, path: str, token: str) -> str:
    roll = rng.random()
    if roll < 0.7:
        return f"{path}?k={token}"
    return path + rng.choice(("", "?k=", f"?k={token[:-1]}", f"?x=1&k={token}", f"?k={token}%00", "?k=" + "A" * 22))


def _pull_path(rng: random.Random, tokens: dict[str | None, str]) -> str:
    roll = rng.random()
    if roll < 0.35:
        identifier = rng.choice(IDENTIFIERS)
        return _with_token(rng, "/totp/" + quote(identifier, safe=""), tokens[identifier])
    if roll < 0.45:
        return rng.choice((_with_token(rng, "/totp", tokens[None]), "/totp/", "/totp//", "/totp/%2F", "/totp/?k=x",
                           "/totp/bob?x=%ff&y"))
    if roll < 0.75:
        return "/totp/" + quote(_odd_text(rng).encode("utf-8", "surrogatepass"), safe="")
    raw = rng.randbytes(rng.randint(0, 30))
    return "/totp/" + "".join(f"%{b:02X}" for b in raw)


def _pull_body(rng: random.Random) -> bytes:
    ids = {"task_id": "tsk_1", "workflow_run_id": "wr_1", "workflow_permanent_id": "wpid_ok"}
    base = signing.compact_json({k: v for k, v in ids.items() if rng.random() < 0.6})
    roll = rng.random()
    if roll < 0.3:
        return base
    if roll < 0.55:
        return mutate_json(base, rng) or base
    if roll < 0.75:
        key = rng.choice(("task_id", "workflow_run_id", "workflow_permanent_id", "x"))
        return b'{"' + key.encode() + b'":' + _odd_json_value(rng) + b"}"
    if roll < 0.9:
        return mutate_bytes(base, rng)
    return rng.choice((rng.randbytes(rng.randint(0, 300)), b"x" * 70_000, rng.choice(ODD_JSON)))


def _pull_headers(rng: random.Random, body: bytes) -> tuple[dict[str, str], bool]:
    """Headers, and whether they carry a valid signature."""
    headers = {"content-type": rng.choice(("application/json", "text/plain", "application/json; charset=latin1"))}
    roll = rng.random()
    if roll < 0.45:
        headers[signing.SIGNATURE_HEADER] = signing.sign(body, SKYVERN_KEY)
    elif roll < 0.7:
        headers[signing.SIGNATURE_HEADER] = signing.sign(body, "a-key-we-do-not-know")
    elif roll < 0.85:
        headers[signing.SIGNATURE_HEADER] = rng.choice(("", "00", "zz" * 32, "A" * 64, "x" * 5000,
                                                        signing.sign(body, SKYVERN_KEY).upper()))
    headers[signing.TIMESTAMP_HEADER] = rng.choice((str(int(time.time())), "", "nan", "inf", "-1", "1e999", "x"))
    if rng.random() < 0.1:
        headers["x-forwarded-for"] = rng.choice(("1.2.3.4", "", "::1, 10.0.0.1", "not an ip", "1.1.1.1," * 200))
    given = headers.get(signing.SIGNATURE_HEADER, "")
    return headers, given.strip().lower() == signing.sign(body, SKYVERN_KEY)  # hex in any case is the same MAC


def _raw_request(rng: random.Random, path: str, body: bytes) -> bytes:
    """A request head as a broken client might write it."""
    head = f"POST {path} HTTP/1.1\r\nhost: t\r\ncontent-length: {len(body)}\r\n\r\n".encode() + body
    roll = rng.random()
    if roll < 0.5:
        return mutate_bytes(head, rng)
    if roll < 0.7:
        return head.replace(b"\r\n", b"\n")
    if roll < 0.85:
        return b"POST " + path.encode() + b" HTTP/1.1\r\n" + rng.randbytes(rng.randint(0, 200)) + b"\r\n\r\n"
    return head.replace(b"content-length", b"transfer-encoding: chunked\r\nx", 1)


def _raw_status(url: str, data: bytes) -> int | None:
    parts = urlsplit(url)
    with socket.create_connection((parts.hostname, parts.port), timeout=5) as sock:
        try:
            sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)
            answer = sock.recv(65536)
        except OSError:
            return None
    if not answer:
        return None  # closed without a word: allowed for bytes that are not HTTP
    assert answer.startswith(b"HTTP/1.1 "), answer[:80]
    return int(answer[9:12])


@pytest.mark.parametrize("url_tokens", [True, False], ids=["url_tokens", "no_url_tokens"])
@pytest.mark.parametrize("protocol", ["pull_protocol", "asgi"])
def test_fuzz_pulls(tmp_path, monkeypatch: pytest.MonkeyPatch, log_watch: LogWatch, protocol: str,
                    url_tokens: bool) -> None:
    if protocol == "asgi":
        monkeypatch.setattr(helpers_app, "SERVER_PROTOCOL", "httptools")
    settings = make_settings(tmp_path)
    settings.server.refusal_limit = 10**9  # throttling would answer most of them 429 without a look
    settings.server.max_body_bytes = 65536
    settings.server.require_url_token = url_tokens  # on as shipped: the right ?k= on most paths, a wrong one on others
    key = crypto.MasterKey.from_base64(settings.master_key or "")
    tokens = {identifier: key.url_token(normalize_identifier(identifier)) for identifier in IDENTIFIERS}
    tokens[None] = key.url_token(None)
    add_secret(settings, "alice@example.com", allowed_agents=["wpid_ok"])
    add_secret(settings, "bob")
    rng = random.Random(SEED * 4 + 2 * (protocol == "asgi") + url_tokens)
    statuses: Counter[int] = Counter()
    codes_for_bad_signatures = 0
    count = PULL_INPUTS // 4
    with running_service(settings) as svc, svc.client() as client:
        for _ in range(count):
            path, body = _pull_path(rng, tokens), _pull_body(rng)
            if rng.random() < 0.05:
                status = _raw_status(svc.url, _raw_request(rng, path, body))
                statuses[status or 0] += 1
                assert status is None or status < 500, (path, body[:80])
                continue
            headers, valid = _pull_headers(rng, body)
            try:
                response = client.post(path, content=body, headers=headers)
            except httpx.RemoteProtocolError:  # the server closed on bytes it refused: no answer to check
                statuses[0] += 1
                continue
            statuses[response.status_code] += 1
            assert response.status_code < 500, (response.status_code, path, body[:80], response.text[:200])
            if not valid and '"verification_code":"' in response.text and '"verification_code":""' not in response.text:
                codes_for_bad_signatures += 1
        assert client.get("/readyz").status_code == 200
    assert codes_for_bad_signatures == 0
    assert log_watch.tracebacks == []
    assert statuses[200] >= count // 100  # the generator reaches the code path, not only refusals
    _report(f"pulls ({protocol}, {'url tokens' if url_tokens else 'no url tokens'})", {"inputs": count, "5xx": sum(v for k, v in statuses.items() if k >= 500),
                                   "tracebacks": len(log_watch.tracebacks),
                                   "codes_for_bad_signatures": codes_for_bad_signatures,
                                   "statuses": dict(sorted(statuses.items()))})


# --- admin API -------------------------------------------------------------------------------


_SECRET_BODY = {"secret": "JBSWY3DPEHPK3PXPJBSWY3DP", "issuer": "Site", "account": "me", "digits": 6, "period": 30,
                "algorithm": "SHA1", "allowed_agents": ["wpid_ok"], "min_validity_seconds": 5, "replace": True}
_URI_BODY = {"uri": "otpauth://totp/Site:me?secret=JBSWY3DPEHPK3PXP&period=30&digits=6", "replace": True}
_BINDING_BODY = {"kind": "run", "ref": "wr_1", "identifier": "bob", "ttl_seconds": 60}


def _admin_body(rng: random.Random, template: dict[str, object]) -> bytes:
    base = json.dumps(template).encode()
    roll = rng.random()
    if roll < 0.2:
        return base
    if roll < 0.6:
        return mutate_json(base, rng) or base
    if roll < 0.85:
        key = rng.choice(sorted(template) + ["expires_at", "unknown"])
        data = dict(template)
        data.pop(key, None)
        return base[:-1] + (b", " if data else b"") + json.dumps(key).encode() + b": " + _odd_json_value(rng) + b"}" \
            if data else b"{" + json.dumps(key).encode() + b":" + _odd_json_value(rng) + b"}"
    return mutate_bytes(base, rng)


def _admin_request(rng: random.Random) -> tuple[str, str, bytes | None]:
    ident = quote(rng.choice(IDENTIFIERS) if rng.random() < 0.5 else _odd_text(rng).encode("utf-8", "surrogatepass"),
                  safe="@+")
    roll = rng.randrange(10)
    if roll < 3:
        return "PUT", f"/v1/secrets/{ident}", _admin_body(rng, rng.choice((_SECRET_BODY, _URI_BODY)))
    if roll < 5:
        return "POST", "/v1/bindings", _admin_body(rng, _BINDING_BODY)
    if roll == 5:
        return rng.choice(("GET", "DELETE")), f"/v1/secrets/{ident}", None
    if roll == 6:
        return "GET", f"/v1/codes/{ident}", None
    if roll == 7:
        query = rng.choice(("", "?since=" + quote(_odd_text(rng).encode("utf-8", "surrogatepass")),
                            "?limit=" + rng.choice(("0", "-1", "10", "1e9", "x", "99999999999999999999")),
                            "?identifier=" + ident, "?since=1e999", "?since=nan"))
        return "GET", "/v1/audit" + query, None
    if roll == 8:
        return "DELETE", "/v1/bindings?kind=" + rng.choice(("run", "agent", "x", "")) + "&ref=" + ident, None
    return rng.choice(("GET", "POST", "PATCH")), rng.choice(("/v1/secrets", "/v1/bindings", "/readyz", "/metrics",
                                                              "/openapi.json", "/v1/secrets/")), None


def test_fuzz_admin_api(tmp_path, log_watch: LogWatch) -> None:
    settings = make_settings(tmp_path)
    add_secret(settings, "bob")
    rng = random.Random(SEED * 3)
    statuses: Counter[int] = Counter()
    with running_service(settings) as svc, svc.client() as client:
        for index in range(ADMIN_INPUTS):
            method, path, body = _admin_request(rng)
            token = rng.choices((ADMIN_TOKEN, READER_TOKEN, "-", "x" * 40), (90, 4, 3, 3))[0]
            headers = {"content-type": "application/json", "authorization": f"Bearer {token}"}
            response = client.request(method, path, content=body, headers=headers)
            statuses[response.status_code] += 1
            assert response.status_code < 500, (method, path, body[:120] if body else None, response.text[:200])
            if index % 100 == 99:  # what was stored can still be read back
                for listing in ("/v1/secrets", "/v1/bindings", "/v1/audit?limit=50"):
                    assert client.get(listing, headers={"authorization": f"Bearer {ADMIN_TOKEN}"}).status_code == 200
    assert log_watch.tracebacks == []
    assert statuses[200] + statuses[201] > ADMIN_INPUTS // 10
    _report("admin", {"inputs": ADMIN_INPUTS, "5xx": sum(v for k, v in statuses.items() if k >= 500),
                      "tracebacks": len(log_watch.tracebacks), "statuses": dict(sorted(statuses.items()))})


# --- importers ---------------------------------------------------------------------------------


def _import_seeds() -> list[bytes]:
    return [fx.aegis_plain(), fx.twofas_plain(), fx.andotp_plain(), fx.bitwarden_json(), fx.bitwarden_csv(),
            fx.freeotp_json(), fx.twofauth_json(), fx.otpauth_lines(hotp=True), fx.google_migration(),
            fx.aegis_encrypted(n=2**10), fx.twofas_encrypted(), fx.andotp_encrypted(iterations=1000)]


def test_fuzz_importers() -> None:
    rng = random.Random(SEED * 5)
    seeds = _import_seeds()
    outcome: Counter[str] = Counter()
    for index in range(IMPORT_INPUTS):
        base = rng.choice(seeds)
        roll = rng.random()
        data = (mutate_json(base, rng) or mutate_bytes(base, rng)) if roll < 0.4 else \
            mutate_bytes(base, rng) if roll < 0.9 else rng.randbytes(rng.randint(0, 300))
        password = rng.choice((None, fx.PASSWORD, "wrong"))
        try:
            if index % 3 == 2:  # one line, as `secret add --uri` and PUT /v1/secrets take it
                text = data.decode("utf-8", "surrogateescape").splitlines()[0] if data else ""
                imports.parse_any(text) if rng.random() < 0.5 else imports.parse_line(text)
            else:
                imports.read_export(data, password=password)
        except (ImportFileError, imports.OtpFormatError) as exc:
            assert "\n" not in str(exc), str(exc)
            outcome["refused"] += 1
        except Exception as exc:  # the failure being looked for
            raise AssertionError(f"input {index} (seed {SEED}) raised {type(exc).__name__}: {exc!r}; "
                                 f"input starts {data[:80]!r}") from exc
        else:
            outcome["parsed"] += 1
    assert outcome["parsed"] > IMPORT_INPUTS // 50
    _report("importers", {"inputs": IMPORT_INPUTS, "uncaught": 0, **outcome})
