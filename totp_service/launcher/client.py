"""A small typed client for the Skyvern endpoints this project uses (see shared/SKYVERN.md).

Why it exists: the launcher must start a run exactly once, survive a flaky network while it
follows the run and pushes codes, and turn Skyvern's answers into errors a user can act on,
without an API key or a TOTP code ever reaching a message.

Retry policy
- Reads, cancels, pushes and lists are retried with exponential backoff and jitter on connection
  errors, timeouts, 429 (honouring ``Retry-After`` seconds) and 5xx. Repeating them is harmless:
  a repeated push of the same code only adds a second identical row.
- Starting a run is retried only when Skyvern surely did not act on the request: the connection
  was never made (``httpx.ConnectError`` / ``ConnectTimeout``), or Skyvern answered 429 (its rate
  limiter refuses a request before any handler runs). A read timeout, a dropped connection after
  the request was sent, or a 5xx may mean the run exists: those raise ``SkyvernRunStartUnknown``
  and are never retried, so a run is never started twice.
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Mapping
from datetime import datetime, timezone
from types import TracebackType
from typing import Any, Final, Literal

import httpx

DEFAULT_BASE_URL: Final = "https://api.skyvern.com"
API_KEY_HEADER: Final = "x-api-key"
MAX_STEPS_HEADER: Final = "x-max-steps-override"
FINAL_STATUSES: Final = frozenset({"completed", "failed", "terminated", "canceled", "timed_out"})
MAX_RETRY_AFTER_SECONDS: Final = 60.0
_DETAIL_LIMIT: Final = 300

_Policy = Literal["idempotent", "create"]


class SkyvernError(Exception):
    """Base of every error this client raises; the message is one line, free of keys and codes."""

    def __init__(self, message: str, *, status_code: int | None = None, detail: str | None = None):
        super().__init__(message)
        self.status_code = status_code
        self.detail = detail


class SkyvernConfigError(SkyvernError):
    """The client cannot be built: no API key, bad base URL."""


class SkyvernAuthError(SkyvernError):
    """Skyvern refused the API key (401/403)."""


class SkyvernNotFound(SkyvernError):
    """Unknown run, agent or route (404)."""


class SkyvernValidationError(SkyvernError):
    """Skyvern (or this client, before sending) refused the request's content (400/422)."""


class SkyvernBlockedHost(SkyvernValidationError):
    """Cloud Skyvern refuses a loopback/private ``totp_url``: use push mode instead."""


class SkyvernUnavailable(SkyvernError):
    """Skyvern could not be reached or kept failing (connection, timeout, 5xx, retries exhausted)."""


class SkyvernRunStartUnknown(SkyvernUnavailable):
    """A run start may have reached Skyvern but its answer was lost: do not start it again blindly."""


def _one_line(text: str, secrets: tuple[str, ...]) -> str:
    """Flatten and shorten text from Skyvern, blanking anything equal to a secret we hold."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    text = " ".join(text.split())
    return text if len(text) <= _DETAIL_LIMIT else text[: _DETAIL_LIMIT - 1] + "…"


def _format_detail(payload: Any) -> str:
    """Render FastAPI's ``detail`` (a string, or pydantic's error list) without echoing inputs."""
    detail = payload.get("detail", payload) if isinstance(payload, Mapping) else payload
    if isinstance(detail, str):
        return detail
    if isinstance(detail, list):
        parts = []
        for item in detail:
            if isinstance(item, Mapping):
                loc = ".".join(str(p) for p in item.get("loc", ()) if p != "body")
                msg = str(item.get("msg", "invalid"))
                parts.append(f"{loc}: {msg}" if loc else msg)
            else:
                parts.append(str(item))
        return "; ".join(parts)
    return "" if detail is None else str(detail)


def _response_detail(response: httpx.Response) -> str:
    try:
        return _format_detail(response.json())
    except ValueError:
        return response.reason_phrase or ""


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after", "").strip()
    try:
        seconds = float(value)
    except ValueError:
        return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER_SECONDS)


def format_expired_at(moment: datetime) -> str:
    """ISO 8601 in UTC with a ``Z``; a naive datetime is taken as UTC, as Skyvern does."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    utc = moment.astimezone(timezone.utc).replace(tzinfo=None)
    return utc.isoformat(timespec="milliseconds") + "Z"


class SkyvernClient:
    """Typed access to Skyvern runs and pushed TOTP codes; use as a context manager."""

    def __init__(
        self,
        base_url: str = DEFAULT_BASE_URL,
        api_key: str = "",
        *,
        timeout: float = 30.0,
        max_retries: int = 4,
        backoff: float = 0.5,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        if not api_key or not api_key.strip():
            raise SkyvernConfigError("no Skyvern API key given (set SKYVERN_API_KEY)")
        base = base_url.strip().rstrip("/")
        if not base.startswith(("http://", "https://")):
            raise SkyvernConfigError("Skyvern base URL must start with http:// or https://")
        self.base_url = base
        self.max_retries = max(0, max_retries)
        self.backoff = max(0.0, backoff)
        self._api_key = api_key.strip()
        self._random = random.Random()
        self._http = httpx.Client(
            base_url=base,
            timeout=httpx.Timeout(timeout),
            headers={API_KEY_HEADER: self._api_key, "accept": "application/json"},
            transport=transport,
            follow_redirects=False,
        )

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **options: Any) -> SkyvernClient:
        """Build from ``SKYVERN_BASE_URL`` / ``SKYVERN_API_KEY``, the names Skyvern's SDK uses."""
        source = os.environ if env is None else env
        base_url = source.get("SKYVERN_BASE_URL") or DEFAULT_BASE_URL
        return cls(base_url, source.get("SKYVERN_API_KEY", ""), **options)

    def __repr__(self) -> str:
        return f"SkyvernClient(base_url={self.base_url!r})"

    def __enter__(self) -> SkyvernClient:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    # -- runs -------------------------------------------------------------------------------

    def run_agent(self, request: Mapping[str, Any], max_steps: int | None = None) -> dict[str, Any]:
        """Start a saved agent (``agent_id`` = ``wpid_…``); never sent twice (see module doc)."""
        return self._start("/v1/run/agents", request, max_steps)

    def run_task(self, request: Mapping[str, Any], max_steps: int | None = None) -> dict[str, Any]:
        """Start a one-off task (``prompt`` required); never sent twice (see module doc)."""
        return self._start("/v1/run/tasks", request, max_steps)

    def get_run(self, run_id: str) -> dict[str, Any]:
        return self._expect_object(self._request("GET", f"/v1/runs/{_path_id(run_id)}"))

    def cancel_run(self, run_id: str) -> None:
        self._request("POST", f"/v1/runs/{_path_id(run_id)}/cancel")

    # -- saved agents -----------------------------------------------------------------------

    def get_agent(self, agent_id: str) -> dict[str, Any]:
        """A saved agent's definition (``GET /v1/workflows/{wpid}``): its parameters and blocks."""
        return self._expect_object(self._request("GET", f"/v1/workflows/{_path_id(agent_id)}"))

    def create_agent(self, json_definition: Mapping[str, Any]) -> dict[str, Any]:
        """Save an agent (``POST /v1/workflows``); the answer holds its ``workflow_permanent_id``."""
        body = {"json_definition": dict(json_definition)}
        return self._expect_object(self._request("POST", "/v1/workflows", json=body))

    # -- pushed codes -----------------------------------------------------------------------

    def push_code(
        self,
        totp_identifier: str,
        content: str,
        *,
        expired_at: datetime | None,
        workflow_run_id: str | None = None,
        task_id: str | None = None,
        source: str = "totp-service",
    ) -> dict[str, Any]:
        """Store a code in Skyvern under the identifier, optionally scoped to one run.

        An empty code is refused here: Skyvern would store it as a usable empty code.
        """
        if not totp_identifier or not totp_identifier.strip():
            raise SkyvernValidationError("refusing to push a code without a totp_identifier")
        if not content or not content.strip():
            raise SkyvernValidationError("refusing to push an empty code")
        body: dict[str, Any] = {"totp_identifier": totp_identifier, "content": content, "source": source}
        if expired_at is not None:
            body["expired_at"] = format_expired_at(expired_at)
        if workflow_run_id:
            body["workflow_run_id"] = workflow_run_id
        if task_id:
            body["task_id"] = task_id
        return self._expect_object(self._request("POST", "/v1/credentials/totp", json=body))

    def list_codes(
        self, totp_identifier: str, workflow_run_id: str | None = None, limit: int | None = None
    ) -> list[dict[str, Any]]:
        params: dict[str, str | int] = {"totp_identifier": totp_identifier}
        if workflow_run_id:
            params["workflow_run_id"] = workflow_run_id
        if limit is not None:
            params["limit"] = limit
        payload = self._json(self._request("GET", "/v1/credentials/totp", params=params))
        if not isinstance(payload, list):
            raise SkyvernError("Skyvern answered GET /v1/credentials/totp with something not a list")
        return payload

    # -- plumbing ---------------------------------------------------------------------------

    def _start(self, path: str, request: Mapping[str, Any], max_steps: int | None) -> dict[str, Any]:
        headers = {MAX_STEPS_HEADER: str(int(max_steps))} if max_steps is not None else None
        response = self._request("POST", path, json=dict(request), headers=headers, policy="create")
        return self._expect_object(response)

    def _request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: Mapping[str, str | int] | None = None,
        headers: Mapping[str, str] | None = None,
        policy: _Policy = "idempotent",
    ) -> httpx.Response:
        where = f"{method} {path}"
        attempt = 0
        while True:
            try:
                response = self._http.request(method, path, json=json, params=params, headers=headers)
            except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
                failure = SkyvernUnavailable(f"cannot connect to Skyvern at {self.base_url} ({where})")
                wait: float | None = None
                cause: BaseException | None = exc
            except httpx.TransportError as exc:  # the request may have reached Skyvern
                if policy == "create":
                    raise SkyvernRunStartUnknown(
                        f"{where}: no answer from Skyvern ({type(exc).__name__}); the run may have "
                        "started: check the Skyvern UI before starting it again"
                    ) from None
                failure = SkyvernUnavailable(f"{where}: no answer from Skyvern ({type(exc).__name__})")
                wait = None
                cause = exc
            else:
                status = response.status_code
                if status < 400:
                    return response
                if status == 429:
                    failure = SkyvernUnavailable(f"{where}: Skyvern is rate limiting (429)", status_code=429)
                    wait = _retry_after(response)
                elif status >= 500:
                    if policy == "create":
                        raise SkyvernRunStartUnknown(
                            f"{where}: Skyvern answered {status}; the run may have started: check the "
                            "Skyvern UI before starting it again",
                            status_code=status,
                            detail=self._clean(_response_detail(response)),
                        )
                    failure = SkyvernUnavailable(f"{where}: Skyvern answered {status}", status_code=status)
                    wait = _retry_after(response)
                else:
                    raise self._client_error(where, response)
                cause = None
            if attempt >= self.max_retries:
                raise SkyvernUnavailable(
                    f"{failure} (gave up after {attempt + 1} attempts)", status_code=failure.status_code
                ) from cause
            time.sleep(self._delay(attempt, wait))
            attempt += 1

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        """Exponential backoff with jitter; a Retry-After is a floor, not a suggestion."""
        base = self.backoff * (2**attempt)
        jittered = base * (0.5 + self._random.random())
        return max(jittered, retry_after) if retry_after is not None else jittered

    def _clean(self, text: str) -> str:
        return _one_line(text, (self._api_key,))

    def _client_error(self, where: str, response: httpx.Response) -> SkyvernError:
        status = response.status_code
        detail = self._clean(_response_detail(response))
        if status in (401, 403):
            return SkyvernAuthError(
                f"Skyvern rejected the API key ({status} {detail or 'Invalid credentials'})",
                status_code=status,
                detail=detail,
            )
        if status == 404:
            return SkyvernNotFound(f"{where}: not found ({detail or '404'})", status_code=404, detail=detail)
        if status in (400, 422):
            if "blocked host" in detail.lower():
                return SkyvernBlockedHost(
                    f"{where}: {detail} (cloud Skyvern cannot reach a loopback or private totp_url: "
                    "use push mode)",
                    status_code=status,
                    detail=detail,
                )
            return SkyvernValidationError(f"{where}: {detail or status}", status_code=status, detail=detail)
        return SkyvernError(f"{where}: Skyvern answered {status} ({detail})", status_code=status, detail=detail)

    def _json(self, response: httpx.Response) -> Any:
        try:
            return response.json()
        except ValueError:
            raise SkyvernError(
                f"Skyvern answered {response.request.method} {response.request.url.path} with non-JSON"
            ) from None

    def _expect_object(self, response: httpx.Response) -> dict[str, Any]:
        payload = self._json(response)
        if not isinstance(payload, dict):
            raise SkyvernError(
                f"Skyvern answered {response.request.method} {response.request.url.path} with a non-object"
            )
        return payload


def _path_id(run_id: str) -> str:
    """Run ids go into the URL path: refuse anything that could change the path."""
    if not run_id or any(ch in run_id for ch in "/?#%") or run_id.strip() != run_id:
        raise SkyvernValidationError("invalid run or agent id")
    return run_id


def is_final(status: str | None) -> bool:
    return status in FINAL_STATUSES
