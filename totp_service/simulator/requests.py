"""Run-request validation, as Skyvern 1.0.56's schemas refuse what they refuse (422/400/404)."""

from __future__ import annotations

import ipaddress
import re
from typing import Any
from urllib.parse import urlsplit

from totp_service.simulator.options import (
    BROWSER_TYPES,
    MAX_FILE_IDS,
    PROXY_LOCATIONS,
    TASK_ENGINES,
    SimulatorOptions,
)


class RequestInvalid(Exception):
    """A run/push request Skyvern would refuse; carries the status and FastAPI-style detail."""

    def __init__(self, status: int, detail: Any):
        super().__init__(str(status))
        self.status = status
        self.detail = detail


# -- request validation ----------------------------------------------------------------------


def _err(loc: str, msg: str, value: Any = None, kind: str = "value_error") -> dict[str, Any]:
    return {"type": kind, "loc": ["body", loc], "msg": msg, "input": value}


def _check_optional(body: dict[str, Any], name: str, kind: type | tuple[type, ...], errors: list) -> None:
    value = body.get(name)
    if value is not None and (not isinstance(value, kind) or isinstance(value, bool) and kind is int):
        errors.append(_err(name, f"Input should be a valid {getattr(kind, '__name__', 'value')}", value))


def _check_str_map(body: dict[str, Any], name: str, errors: list) -> None:
    value = body.get(name)
    if value is None:
        return
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        errors.append(_err(name, "Input should be a valid dictionary of strings", value))


def _check_url(body: dict[str, Any], name: str, errors: list) -> None:
    value = body.get(name)
    if value is None:
        return
    parts = urlsplit(value) if isinstance(value, str) else None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
        errors.append(_err(name, "Input should be a valid URL", value, "url_parsing"))


def _check_proxy(value: Any, errors: list) -> None:
    if value is None:
        return
    if isinstance(value, str):
        if value not in PROXY_LOCATIONS:
            errors.append(_err("proxy_location", "Input should be a valid proxy location", value, "enum"))
        return
    if isinstance(value, dict):
        if set(value) == {"url"} and isinstance(value["url"], str):
            scheme = urlsplit(value["url"]).scheme
            if scheme in ("http", "https", "socks5") and urlsplit(value["url"]).hostname:
                return
        elif "country" in value and set(value) <= {"country", "subdivision", "city"}:
            country = value["country"]
            others_ok = all(isinstance(value.get(k), (str, type(None))) for k in ("subdivision", "city"))
            if isinstance(country, str) and re.fullmatch(r"[A-Z]{2}", country) and others_ok:
                return
    errors.append(_err("proxy_location", "Input should be a valid proxy location", value))


def is_private_host(url: str) -> bool:
    """What cloud Skyvern refuses as a totp_url host: loopback, private, link-local, localhost."""
    host = (urlsplit(url).hostname or "").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    return address.is_loopback or address.is_private or address.is_link_local or address.is_unspecified


def _validate_common(body: dict[str, Any], errors: list) -> None:
    for name in ("title", "totp_identifier", "browser_address", "browser_session_id", "browser_profile_id"):
        _check_optional(body, name, str, errors)
    for name in ("parameters",):
        _check_optional(body, name, dict, errors)
    for name in ("extra_http_headers", "cdp_connect_headers", "run_metadata"):
        _check_str_map(body, name, errors)
    for name in ("webhook_url", "totp_url"):
        _check_url(body, name, errors)
    _check_proxy(body.get("proxy_location"), errors)
    _check_optional(body, "ai_fallback", bool, errors)
    for name in ("max_screenshot_scrolls", "max_elapsed_time_minutes"):
        _check_optional(body, name, int, errors)
    scrolls = body.get("max_screenshot_scrolls")
    if isinstance(scrolls, int) and scrolls < 0:
        errors.append(_err("max_screenshot_scrolls", "Input should be greater than or equal to 0", scrolls))
    minutes = body.get("max_elapsed_time_minutes")
    if isinstance(minutes, int) and not isinstance(minutes, bool) and not 1 <= minutes <= 240:
        errors.append(_err("max_elapsed_time_minutes", "Input should be between 1 and 240", minutes))
    if body.get("run_with") not in (None, "agent", "code"):
        errors.append(_err("run_with", "Input should be 'agent' or 'code'", body.get("run_with"), "enum"))
    for name, prefix in (("browser_session_id", "pbs_"), ("browser_profile_id", "bp_")):
        value = body.get(name)
        if isinstance(value, str) and not value.startswith(prefix):
            errors.append(_err(name, f"Value should start with {prefix}", value))


def _check_browser_type(body: dict[str, Any], errors: list) -> None:
    value = body.get("browser_type")
    if value is None:
        return
    if value not in BROWSER_TYPES:
        errors.append(_err("browser_type", f"Value error, Invalid browser_type '{value}'; must be one of: "
                                           f"{', '.join(BROWSER_TYPES)}", value))
    elif body.get("browser_session_id") is not None or body.get("browser_address") is not None:
        errors.append({"type": "value_error", "loc": ["body"], "input": None,
                       "msg": "Value error, browser_type cannot be combined with browser_session_id or "
                              "browser_address — an attached browser owns its engine."})


def _check_file_ids(body: dict[str, Any], errors: list) -> None:
    value = body.get("file_ids")
    if value is None:
        return
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        errors.append(_err("file_ids", "Input should be a valid list of strings", value, "list_type"))
    elif len(value) > MAX_FILE_IDS:
        errors.append(_err("file_ids", f"List should have at most {MAX_FILE_IDS} items after validation, "
                                       f"not {len(value)}", None, "too_long"))


def validate_run_request(body: Any, kind: str, options: SimulatorOptions) -> dict[str, Any]:
    """Refuse what Skyvern refuses (422 field errors, 400 blocked host); return the stored request."""
    if not isinstance(body, dict):
        raise RequestInvalid(422, [{"type": "model_attributes_type", "loc": ["body"],
                                    "msg": "Input should be a valid dictionary or object", "input": body}])
    errors: list[dict[str, Any]] = []
    request = dict(body)
    if kind == "agent":
        agent_id = request.get("agent_id") or request.get("workflow_id")
        if not isinstance(agent_id, str) or not agent_id:
            errors.append(_err("workflow_id", "Field required", None, "missing"))
        else:
            request["agent_id"] = agent_id
            request.pop("workflow_id", None)
    else:
        prompt = request.get("prompt")
        if not isinstance(prompt, str) or not prompt.strip():
            errors.append(_err("prompt", "Field required", None, "missing"))
        _check_url(request, "url", errors)
        if request.get("engine") not in (None, *TASK_ENGINES):
            errors.append(_err("engine", "Input should be a valid engine", request.get("engine"), "enum"))
        _check_str_map(request, "error_code_mapping", errors)
        _check_optional(request, "max_steps", int, errors)
    if kind == "agent":
        _check_browser_type(request, errors)
    _check_file_ids(request, errors)
    _validate_common(request, errors)
    if errors:
        raise RequestInvalid(422, errors)
    totp_url = request.get("totp_url")
    if options.block_private_totp_url and totp_url and is_private_host(totp_url):
        raise RequestInvalid(400, "Invalid totp_url: blocked host.")
    return request
