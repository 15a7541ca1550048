"""The OpenAPI 3.1 description of every route, written by hand (no schema library at run time)."""

from __future__ import annotations

from typing import Any

from totp_service import __version__


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


_ERR = _ref("Error")
_BEARER = [{"bearer": []}]


def _errors(*codes: int) -> dict[str, Any]:
    text = {400: "bad input", 401: "missing or bad signature / token", 403: "not allowed",
            404: "unknown identifier, binding or route", 409: "already exists", 413: "body too large",
            503: "audit trail cannot be written: nothing answered"}
    return {str(c): _json(_ERR, text[c]) for c in codes}


def _pull(with_path: bool) -> dict[str, Any]:
    params = [{"name": "identifier", "in": "path", "required": True, "schema": {"type": "string"},
               "description": "the totp_identifier, URL-encoded"}] if with_path else []
    return {"post": {
        "summary": "Skyvern's totp_url pull" + ("" if with_path else " (identifier from a run or agent binding)"),
        "parameters": params + [
            {"name": "x-skyvern-signature", "in": "header", "required": True, "schema": {"type": "string"},
             "description": "lowercase hex HMAC-SHA256 of the raw body, keyed by a Skyvern API key"},
            {"name": "x-skyvern-timestamp", "in": "header", "required": False, "schema": {"type": "string"}},
        ],
        "requestBody": {"required": True, "content": {"application/json": {"schema": _ref("PullBody")}}},
        "responses": {"200": _json(_ref("PullAnswer"), "a fresh code, or an empty one: poll again"),
                      **_errors(400, 401, 403, 404, 413, 503)},
    }}


def openapi_document() -> dict[str, Any]:
    ident = [{"name": "identifier", "in": "path", "required": True, "schema": {"type": "string"}}]
    return {
        "openapi": "3.1.0",
        "info": {"title": "totp-service", "version": __version__,
                 "description": "Self-hosted TOTP codes for Skyvern runs. Secrets are write-only."},
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "Error": {"type": "object", "required": ["error", "detail"],
                          "properties": {"error": {"type": "string"}, "detail": {"type": "string"}}},
                "PullBody": {"type": "object", "properties": {
                    "task_id": {"type": "string"}, "workflow_run_id": {"type": "string"},
                    "workflow_permanent_id": {"type": "string"}}},
                "PullAnswer": {"type": "object", "required": ["verification_code"], "properties": {
                    "verification_code": {"type": "string"},
                    "expires_at": {"type": "string", "format": "date-time"}}},
                "SecretIn": {"type": "object", "properties": {
                    "uri": {"type": "string", "description": "otpauth://totp/… (or a one-account export)"},
                    "secret": {"type": "string", "description": "base32"},
                    "algorithm": {"type": "string", "enum": ["SHA1", "SHA256", "SHA512"]},
                    "digits": {"type": "integer", "enum": [6, 7, 8]},
                    "period": {"type": "integer"},
                    "issuer": {"type": "string"}, "account": {"type": "string"},
                    "allowed_agents": {"type": "array", "items": {"type": "string"}},
                    "min_validity_seconds": {"type": ["number", "null"]},
                    "replace": {"type": "boolean"}}},
                "SecretMeta": {"type": "object", "properties": {
                    "identifier": {"type": "string"}, "algorithm": {"type": "string"},
                    "digits": {"type": "integer"}, "period": {"type": "integer"},
                    "issuer": {"type": ["string", "null"]}, "account": {"type": ["string", "null"]},
                    "allowed_agents": {"type": "array", "items": {"type": "string"}},
                    "min_validity_seconds": {"type": ["number", "null"]}, "key_id": {"type": "string"},
                    "created_at": {"type": "number"}, "updated_at": {"type": "number"}}},
                "BindingIn": {"type": "object", "required": ["kind", "ref", "identifier"], "properties": {
                    "kind": {"type": "string", "enum": ["run", "agent"]}, "ref": {"type": "string"},
                    "identifier": {"type": "string"},
                    "expires_at": {"type": ["number", "string"], "description": "unix seconds or ISO 8601"},
                    "ttl_seconds": {"type": "number"}}},
                "Binding": {"type": "object", "properties": {
                    "kind": {"type": "string"}, "ref": {"type": "string"}, "identifier": {"type": "string"},
                    "expires_at": {"type": ["number", "null"]}, "created_at": {"type": "number"}}},
                "Code": {"type": "object", "properties": {
                    "identifier": {"type": "string"}, "code": {"type": "string"},
                    "seconds_left": {"type": "number"}, "expires_at": {"type": "string", "format": "date-time"},
                    "period": {"type": "integer"}}},
                "AuditEntry": {"type": "object", "properties": {
                    "id": {"type": "integer"}, "at": {"type": "number"}, "outcome": {"type": "string"},
                    "identifier": {"type": ["string", "null"]}, "task_id": {"type": ["string", "null"]},
                    "workflow_run_id": {"type": ["string", "null"]},
                    "workflow_permanent_id": {"type": ["string", "null"]}, "client": {"type": ["string", "null"]},
                    "route": {"type": ["string", "null"]}, "detail": {"type": ["string", "null"]}}},
            },
        },
        "paths": {
            "/totp": _pull(False),
            "/totp/{identifier}": _pull(True),
            "/v1/secrets": {"get": {"summary": "list secrets' metadata", "security": _BEARER, "responses": {
                "200": _json({"type": "object", "properties": {"secrets": {"type": "array",
                              "items": _ref("SecretMeta")}}}, "metadata only"), **_errors(401, 403)}}},
            "/v1/secrets/{identifier}": {
                "put": {"summary": "store a secret (write-only)", "security": _BEARER, "parameters": ident,
                        "requestBody": {"required": True, "content": {"application/json": {"schema": _ref("SecretIn")}}},
                        "responses": {"201": _json(_ref("SecretMeta"), "created"),
                                      "200": _json(_ref("SecretMeta"), "replaced"), **_errors(400, 401, 403, 409, 413)}},
                "get": {"summary": "one secret's metadata", "security": _BEARER, "parameters": ident,
                        "responses": {"200": _json(_ref("SecretMeta"), "metadata"), **_errors(401, 403, 404)}},
                "delete": {"summary": "remove a secret", "security": _BEARER, "parameters": ident,
                           "responses": {"200": _json({"type": "object"}, "deleted"), **_errors(401, 403, 404)}},
            },
            "/v1/bindings": {
                "post": {"summary": "bind a run id or agent id to an identifier", "security": _BEARER,
                         "requestBody": {"required": True, "content": {"application/json": {"schema": _ref("BindingIn")}}},
                         "responses": {"201": _json(_ref("Binding"), "created"), **_errors(400, 401, 403, 404)}},
                "get": {"summary": "list live bindings (and the config file's agent bindings)", "security": _BEARER,
                        "responses": {"200": _json({"type": "object"}, "bindings"), **_errors(401, 403)}},
                "delete": {"summary": "remove a binding", "security": _BEARER, "parameters": [
                    {"name": "kind", "in": "query", "required": True, "schema": {"type": "string"}},
                    {"name": "ref", "in": "query", "required": True, "schema": {"type": "string"}}],
                    "responses": {"200": _json({"type": "object"}, "deleted"), **_errors(400, 401, 403, 404)}},
            },
            "/v1/codes/{identifier}": {"get": {
                "summary": "current code for a local client (reader or admin token; audited)", "security": _BEARER,
                "parameters": ident,
                "responses": {"200": _json(_ref("Code"), "the code"), **_errors(401, 403, 404, 503)}}},
            "/v1/audit": {"get": {"summary": "audit trail, newest first", "security": _BEARER, "parameters": [
                {"name": "identifier", "in": "query", "schema": {"type": "string"}},
                {"name": "since", "in": "query", "schema": {"type": "string"}, "description": "unix s or ISO 8601"},
                {"name": "limit", "in": "query", "schema": {"type": "integer", "default": 100}}],
                "responses": {"200": _json({"type": "object", "properties": {"entries": {
                    "type": "array", "items": _ref("AuditEntry")}}}, "entries"), **_errors(400, 401, 403)}}},
            "/healthz": {"get": {"summary": "liveness", "responses": {"200": _json({"type": "object"}, "ok")}}},
            "/readyz": {"get": {"summary": "the store is open with the key and the audit writer runs",
                                "responses": {"200": _json({"type": "object"}, "ready"), **_errors(503)}}},
            "/metrics": {"get": {"summary": "Prometheus text", "responses": {
                "200": {"description": "metrics", "content": {"text/plain": {"schema": {"type": "string"}}}}}}},
            "/openapi.json": {"get": {"summary": "this document",
                                      "responses": {"200": _json({"type": "object"}, "OpenAPI 3.1")}}},
        },
    }
