"""Build and check the body of a Skyvern run request (the seed, shared/SKYVERN.md section 3).

Why: every mistake we can see locally (unknown proxy name, minutes out of range, a malformed
`k=v`, a bad agent id) must stop the launcher before a single request reaches Skyvern, with a
one-line message naming the flag or field. Nothing here talks to the network.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

PROXY_LOCATIONS: Final = frozenset(
    {
        "RESIDENTIAL", "RESIDENTIAL_ES", "RESIDENTIAL_IE", "RESIDENTIAL_GB", "RESIDENTIAL_IN",
        "RESIDENTIAL_JP", "RESIDENTIAL_FR", "RESIDENTIAL_DE", "RESIDENTIAL_NZ", "RESIDENTIAL_PH",
        "RESIDENTIAL_KR", "RESIDENTIAL_SA", "RESIDENTIAL_ZA", "RESIDENTIAL_AR", "RESIDENTIAL_AU",
        "RESIDENTIAL_BR", "RESIDENTIAL_TR", "RESIDENTIAL_CA", "RESIDENTIAL_MX", "RESIDENTIAL_IT",
        "RESIDENTIAL_NL", "RESIDENTIAL_ISP", "NONE", "US-CA", "US-NY", "US-TX", "US-FL", "US-WA",
    }
)
TASK_ENGINES: Final = ("skyvern-1.0", "skyvern-2.0", "skyvern-3.0", "openai-cua", "anthropic-cua", "ui-tars",
                       "yutori-navigator")
BROWSER_TYPES: Final = ("msedge", "chrome", "stealth-chromium")
MAX_FILE_IDS: Final = 50
RUN_WITH: Final = ("agent", "code")
MAX_MINUTES: Final = 240
_AGENT_ID = re.compile(r"^wpid_[A-Za-z0-9_-]+$")
_COUNTRY = re.compile(r"^[A-Z]{2}$")

# Fields each kind of run accepts; anything else in a request is refused before sending.
COMMON_FIELDS: Final = frozenset(
    {"title", "proxy_location", "webhook_url", "totp_url", "totp_identifier", "browser_session_id",
     "browser_address", "extra_http_headers", "max_screenshot_scrolls", "run_with", "file_ids"}
)
AGENT_FIELDS: Final = COMMON_FIELDS | {
    "agent_id", "parameters", "browser_profile_id", "max_elapsed_time_minutes", "cdp_connect_headers",
    "ai_fallback", "run_metadata", "browser_type",
}
TASK_FIELDS: Final = COMMON_FIELDS | {"prompt", "url", "engine", "data_extraction_schema", "error_code_mapping",
                                      "max_steps"}


class LaunchError(Exception):
    """Base of the launcher's errors; the message is one line, free of secrets, codes and keys."""


class RequestError(LaunchError):
    """The run request cannot be right as given: caught before anything is sent."""


# --- small parsers for command-line values -----------------------------------------------------


def parse_pairs(pairs: Iterable[str], flag: str, *, sep: str = "=", json_values: bool = False) -> dict[str, Any]:
    """`k=v` (or `K:V`) items into a dict; with `json_values` a value that parses as JSON is JSON."""
    result: dict[str, Any] = {}
    for number, pair in enumerate(pairs, start=1):
        key, found, value = pair.partition(sep)
        key = key.strip()
        if not found or not key:  # not echoed: a header or parameter value may be a credential
            raise RequestError(f"{flag} takes KEY{sep}VALUE (occurrence {number} has no key or no {sep!r})")
        if sep == ":":
            value = value.strip()
        if json_values:
            try:
                result[key] = json.loads(value)
            except ValueError:
                result[key] = value
        else:
            result[key] = value
    return result


def _shown(text: str) -> str:
    """Echo a malformed argument briefly (they are flags, not secrets, but keep errors short)."""
    return repr(text if len(text) <= 40 else text[:39] + "…")


def read_json_file(path: str | Path, flag: str, *, want: type = dict) -> Any:
    try:
        text = Path(path).expanduser().read_text("utf-8")
    except OSError as exc:
        raise RequestError(f"{flag}: cannot read {path} ({exc.strerror or type(exc).__name__})") from None
    except UnicodeDecodeError:
        raise RequestError(f"{flag}: {path} is not UTF-8 text") from None
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise RequestError(f"{flag}: {path} is not valid JSON (line {getattr(exc, 'lineno', '?')})") from None
    if not isinstance(data, want):
        raise RequestError(f"{flag}: {path} must hold a JSON {'object' if want is dict else want.__name__}")
    return data


def parse_json_or_file(value: str, flag: str) -> Any:
    """Inline JSON, or `@FILE` holding JSON."""
    if value.startswith("@"):
        return read_json_file(value[1:], flag, want=object)
    try:
        return json.loads(value)
    except ValueError:
        raise RequestError(f"{flag} takes JSON or @FILE") from None


def parse_geo(text: str) -> dict[str, str]:
    """`COUNTRY[/SUBDIVISION[/CITY]]` into Skyvern's geo-target proxy object."""
    parts = [p.strip() for p in text.split("/")]
    if not 1 <= len(parts) <= 3 or not all(parts):
        raise RequestError(f"--geo takes COUNTRY[/SUBDIVISION[/CITY]] (got {_shown(text)})")
    country = parts[0].upper()
    if not _COUNTRY.fullmatch(country):
        raise RequestError(f"--geo: the country must be a two-letter ISO code such as US (got {_shown(parts[0])})")
    geo = {"country": country}
    if len(parts) > 1:
        geo["subdivision"] = parts[1].upper()
    if len(parts) > 2:
        geo["city"] = parts[2]
    return geo


def proxy_from_flags(name: str | None, url: str | None, geo: str | None) -> str | dict[str, str] | None:
    given = [flag for flag, value in (("--proxy-location", name), ("--proxy-url", url), ("--geo", geo)) if value]
    if len(given) > 1:
        raise RequestError(f"give only one of {', '.join(given)}")
    if name:
        return name
    if url:
        return {"url": url}
    if geo:
        return parse_geo(geo)
    return None


# --- checking a request -------------------------------------------------------------------------


def check_agent_id(agent_id: str) -> str:
    if not isinstance(agent_id, str) or not _AGENT_ID.fullmatch(agent_id):
        raise RequestError(f"{_shown(str(agent_id))} is not an agent id (wpid_…, from the agent's page in Skyvern)")
    return agent_id


def _check_url(value: Any, name: str, schemes: tuple[str, ...] = ("http", "https")) -> None:
    parts = urlsplit(value) if isinstance(value, str) else None
    if parts is None or parts.scheme not in schemes or not parts.hostname:
        raise RequestError(f"{name} must be an {'/'.join(schemes)} URL with a host")


def _check_str_map(value: Any, name: str) -> None:
    if not isinstance(value, Mapping) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise RequestError(f"{name} must map strings to strings")


def check_proxy(value: Any) -> None:
    if isinstance(value, str):
        if value not in PROXY_LOCATIONS:
            raise RequestError(
                f"unknown proxy location {_shown(value)} (one of RESIDENTIAL, RESIDENTIAL_GB, …, NONE; "
                "see `totp-service launch --help`)"
            )
        return
    if isinstance(value, Mapping):
        if set(value) == {"url"}:
            _check_url(value["url"], "the proxy URL", ("http", "https", "socks5"))
            return
        if "country" in value and set(value) <= {"country", "subdivision", "city"}:
            if not isinstance(value["country"], str) or not _COUNTRY.fullmatch(value["country"]):
                raise RequestError("the geo proxy's country must be a two-letter upper-case code such as US")
            if not all(isinstance(value.get(k), (str, type(None))) for k in ("subdivision", "city")):
                raise RequestError("the geo proxy's subdivision and city must be strings")
            return
    raise RequestError("proxy_location must be a proxy name, {\"url\": …} or {\"country\": …}")


def _check_int(value: Any, name: str, low: int, high: int | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value > high):
        bounds = f"between {low} and {high}" if high is not None else f"at least {low}"
        raise RequestError(f"{name} must be a whole number {bounds} (got {value!r})")


def check_request(request: Mapping[str, Any], kind: str) -> dict[str, Any]:
    """Refuse locally what Skyvern would refuse; returns a plain copy. `kind` is agent or task."""
    allowed = AGENT_FIELDS if kind == "agent" else TASK_FIELDS
    unknown = sorted(set(request) - allowed)
    if unknown:
        raise RequestError(f"unknown field(s) for a {kind} run: {', '.join(unknown)}")
    body = {k: v for k, v in request.items() if v is not None}
    if kind == "agent":
        check_agent_id(body.get("agent_id", ""))
        if not isinstance(body.get("parameters", {}), Mapping):
            raise RequestError("parameters must be a JSON object")
        for name in ("cdp_connect_headers", "run_metadata"):
            if name in body:
                _check_str_map(body[name], name)
        if "max_elapsed_time_minutes" in body:
            _check_int(body["max_elapsed_time_minutes"], "max_elapsed_time_minutes (--max-minutes)", 1, MAX_MINUTES)
        if "ai_fallback" in body and not isinstance(body["ai_fallback"], bool):
            raise RequestError("ai_fallback must be true or false")
        if "browser_profile_id" in body and not str(body["browser_profile_id"]).startswith("bp_"):
            raise RequestError("the browser profile id must start with bp_")
        if "browser_type" in body:
            if body["browser_type"] not in BROWSER_TYPES:
                raise RequestError(f"browser_type (--browser-type) must be one of {', '.join(BROWSER_TYPES)}")
            if "browser_session_id" in body or "browser_address" in body:
                raise RequestError("--browser-type cannot be combined with --browser-session-id or --browser-address "
                                   "(an attached browser owns its engine; Skyvern answers 422)")
    else:
        prompt = body.get("prompt")
        if not isinstance(prompt, str) or not prompt.strip():
            raise RequestError("a task needs a prompt (--prompt)")
        if "url" in body:
            _check_url(body["url"], "url (--url)")
        if body.get("engine") not in (None, *TASK_ENGINES):
            raise RequestError(f"unknown engine {_shown(str(body['engine']))} (one of {', '.join(TASK_ENGINES)})")
        if "error_code_mapping" in body:
            _check_str_map(body["error_code_mapping"], "error_code_mapping")
        if "max_steps" in body:
            _check_int(body["max_steps"], "max_steps (--max-steps)", 1)
    if "proxy_location" in body:
        check_proxy(body["proxy_location"])
    for name in ("webhook_url", "totp_url", "browser_address"):
        if name in body:
            _check_url(body[name], name)
    if "extra_http_headers" in body:
        _check_str_map(body["extra_http_headers"], "extra_http_headers")
    if "file_ids" in body:
        files = body["file_ids"]
        if not isinstance(files, list) or not all(isinstance(f, str) and f.strip() for f in files):
            raise RequestError("file_ids (--file-id) must be a list of file ids")
        if len(files) > MAX_FILE_IDS:
            raise RequestError(f"at most {MAX_FILE_IDS} --file-id per run (got {len(files)})")
    if "max_screenshot_scrolls" in body:
        _check_int(body["max_screenshot_scrolls"], "max_screenshot_scrolls", 0)
    if body.get("run_with") not in (None, *RUN_WITH):
        raise RequestError("run_with must be agent or code")
    if "browser_session_id" in body and not str(body["browser_session_id"]).startswith("pbs_"):
        raise RequestError("the browser session id must start with pbs_")
    for name in ("title", "totp_identifier"):
        if name in body and not isinstance(body[name], str):
            raise RequestError(f"{name} must be a string")
    return dict(body)


def check_max_steps(max_steps: int | None) -> None:
    if max_steps is not None:
        _check_int(max_steps, "--max-steps", 1)
