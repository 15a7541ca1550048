"""The simulator's saved agents: definitions, parameter values, and each block's TOTP sources.

Why: Skyvern 1.0.56 creates a block's task from the block's own `totp_identifier` /
`totp_verification_url`, Jinja-templated with the run's parameter values (lax: an undefined name
renders empty), a bare parameter key in `totp_identifier` replaced by that parameter's value, and a
URL without a scheme given `https://`. The run-level fields reach no block. A declared input
parameter with no value and no default fails the run request with 400 before any run exists.
This module does that for the simulator, in plain functions over the definition JSON.
"""

from __future__ import annotations

import re
import secrets as _secrets
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Final

TOTP_FIELDS: Final = ("totp_identifier", "totp_verification_url")
# Blocks whose task can meet a login (Skyvern: the BaseTaskBlock family and task_v2).
LOGIN_CAPABLE: Final = frozenset({
    "task", "task_v2", "login", "navigation", "action", "extraction", "validation", "file_download",
    "goto_url", "human_interaction",
})
_EXPRESSION = re.compile(r"\{\{(.*?)\}\}", re.DOTALL)
_NAME = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*$")
_DEFAULT = re.compile(r"""^\s*([A-Za-z_][A-Za-z0-9_]*)\s*\|\s*(?:default|d)\s*\(\s*('[^']*'|"[^"]*")\s*\)\s*$""")


class DefinitionInvalid(ValueError):
    """A json_definition Skyvern would refuse (422)."""


class MissingValue(ValueError):
    """A declared input parameter has no value and no default (Skyvern: 400 before the run exists)."""


class RenderFailed(ValueError):
    """A template the simulator cannot render; the run fails as Skyvern's 'Failed to render <field>'."""


def _now() -> datetime:
    return datetime.now(timezone.utc)


def walk_blocks(blocks: Any) -> Iterator[Mapping[str, Any]]:
    """Blocks in order, the blocks of a loop right after the loop (each loop runs its body once here)."""
    for block in blocks if isinstance(blocks, list) else ():
        if isinstance(block, Mapping):
            yield block
            yield from walk_blocks(block.get("loop_blocks"))


def _validate_block(block: Any, labels: set[str]) -> None:
    if not isinstance(block, Mapping) or not isinstance(block.get("block_type"), str):
        raise DefinitionInvalid("every block needs a block_type")
    label = block.get("label")
    if not isinstance(label, str) or not label:
        raise DefinitionInvalid("every block needs a label")
    if label in labels:
        raise DefinitionInvalid(f"duplicate block label {label}")
    labels.add(label)
    for name in TOTP_FIELDS:
        if block.get(name) is not None and not isinstance(block[name], str):
            raise DefinitionInvalid(f"{label}.{name} must be a string")
    for inner in block.get("loop_blocks") or ():
        _validate_block(inner, labels)


def make_workflow(json_definition: Any, agent_id: str | None = None) -> dict[str, Any]:
    """What `POST /v1/workflows {"json_definition": ...}` stores and answers (Skyvern's Workflow shape)."""
    if not isinstance(json_definition, Mapping):
        raise DefinitionInvalid("json_definition must be an object")
    title = json_definition.get("title")
    definition = json_definition.get("workflow_definition")
    if not isinstance(title, str) or not isinstance(definition, Mapping):
        raise DefinitionInvalid("json_definition needs a title and a workflow_definition")
    blocks, parameters = definition.get("blocks"), definition.get("parameters", [])
    if not isinstance(blocks, list) or not isinstance(parameters, list):
        raise DefinitionInvalid("workflow_definition needs blocks and parameters lists")
    labels: set[str] = set()
    for block in blocks:
        _validate_block(block, labels)
    workflow_id, wpid = f"w_{_secrets.token_hex(8)}", agent_id or f"wpid_{_secrets.token_hex(8)}"
    stamp = _now().replace(tzinfo=None).isoformat()
    stored_parameters = []
    for item in parameters:
        if not isinstance(item, Mapping) or not isinstance(item.get("key"), str):
            raise DefinitionInvalid("every parameter needs a key")
        kind = item.get("parameter_type", "workflow")
        entry = {**item, "parameter_type": kind}
        if kind == "workflow":
            entry.setdefault("workflow_parameter_type", "string")
            entry.setdefault("default_value", None)
            entry.update(workflow_parameter_id=f"wp_{_secrets.token_hex(6)}", workflow_id=workflow_id,
                         created_at=stamp, modified_at=stamp, deleted_at=None)
        stored_parameters.append(entry)
    return {
        "workflow_id": workflow_id, "organization_id": "o_simulated", "title": title,
        "workflow_permanent_id": wpid, "version": 1, "is_saved_task": False,
        "description": json_definition.get("description"),
        "workflow_definition": {"version": 1, "parameters": stored_parameters, "blocks": list(blocks)},
        "proxy_location": json_definition.get("proxy_location"), "webhook_callback_url": None,
        "totp_verification_url": json_definition.get("totp_verification_url"),
        "totp_identifier": json_definition.get("totp_identifier"),
        "created_at": stamp, "modified_at": stamp, "deleted_at": None,
    }


def parameter_values(workflow: Mapping[str, Any], given: Mapping[str, Any] | None) -> dict[str, Any]:
    """The run's values for the declared input parameters; MissingValue names any left without one."""
    values: dict[str, Any] = {}
    missing = []
    for item in workflow["workflow_definition"]["parameters"]:
        if item.get("parameter_type") != "workflow":
            continue
        key, default = item["key"], item.get("default_value")
        value = (given or {}).get(key)
        if value is None:
            value = default
        if value is None:
            if item.get("workflow_parameter_type") != "credential_id":  # an at-will credential may be absent
                missing.append(key)
            continue
        values[key] = value
    if missing:
        raise MissingValue(f"Missing value for parameter {', '.join(sorted(missing))} in workflow "
                           f"{workflow['workflow_permanent_id']}")
    return values


def render(template: str, values: Mapping[str, Any]) -> str:
    """The lax Jinja subset blocks use: `{{ name }}` and `{{ name | default('x') }}`; undefined is ''."""

    def one(match: re.Match[str]) -> str:
        inner = match.group(1)
        plain, defaulted = _NAME.match(inner), _DEFAULT.match(inner)
        if plain:
            value = values.get(plain.group(1))
            return "" if value is None else str(value)
        if defaulted:
            name = defaulted.group(1)
            return str(values[name]) if values.get(name) is not None else defaulted.group(2)[1:-1]
        raise RenderFailed("evaluation")

    if "{%" in template:
        raise RenderFailed("evaluation")
    return _EXPRESSION.sub(one, template)


@dataclass(frozen=True)
class BlockSources:
    """Where one block's task polls for codes, after templating."""

    label: str
    block_type: str
    url: str | None
    identifier: str | None


def block_sources(block: Mapping[str, Any], values: Mapping[str, Any]) -> BlockSources:
    """The task's totp_verification_url / totp_identifier as Skyvern 1.0.56 builds them."""
    identifier = block.get("totp_identifier") or None
    if identifier and identifier in values:  # a bare parameter key takes the parameter's value
        identifier = str(values[identifier]) or None
    url = block.get("totp_verification_url") or None
    fields: dict[str, str | None] = {}
    for name, raw in (("totp_identifier", identifier), ("totp_verification_url", url)):
        try:
            fields[name] = (render(raw, values).strip() or None) if raw else None
        except RenderFailed as exc:
            raise RenderFailed(f"Failed to render {name}: {exc}.") from None
    url = fields["totp_verification_url"]
    if url and "://" not in url:
        url = "https://" + url
    return BlockSources(str(block["label"]), str(block["block_type"]), url, fields["totp_identifier"])


def asking_blocks(workflow: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """Blocks whose task meets the site's 2FA prompt: login blocks, and login-capable blocks given TOTP fields."""
    return [
        block for block in walk_blocks(workflow["workflow_definition"]["blocks"])
        if block.get("block_type") == "login"
        or (block.get("block_type") in LOGIN_CAPABLE and any(block.get(name) for name in TOTP_FIELDS))
    ]
