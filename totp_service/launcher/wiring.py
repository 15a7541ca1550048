"""Wire a saved Skyvern agent to our codes through its blocks' own TOTP fields.

Why: Skyvern 1.0.56 builds each block's task from the block's `totp_identifier` and
`totp_verification_url` alone, after templating them with the run's parameters; the run-level
`totp_identifier` / `totp_url` reach no block (shared/SKYVERN.md section 4). So a launch must read
the agent's definition and fill the parameters those fields name, or check the value written in
the block, and stop before any run exists when no block would ever ask for our codes. Pure
functions: definition JSON in, a `WiringPlan` or a `WiringError` naming block, field and
expression out. Nothing here talks to the network.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Final
from urllib.parse import parse_qsl, unquote, urlsplit

from totp_service.identifiers import normalize_identifier

IDENTIFIER_FIELD: Final = "totp_identifier"
URL_FIELD: Final = "totp_verification_url"
TOTP_FIELDS: Final = (IDENTIFIER_FIELD, URL_FIELD)
FIELD_FOR_MODE: Final = {"push": IDENTIFIER_FIELD, "url": URL_FIELD}
NESTED_BLOCK_LISTS: Final = ("loop_blocks", "blocks")  # for_loop / while_loop; conditionals point at labels
# Parameter kinds whose value is a credential: a block with no identifier of its own takes the
# credential's totp_identifier (Skyvern's fallback), which the definition does not show.
CREDENTIAL_PARAMETER_TYPES: Final = frozenset({
    "credential", "bitwarden_login_credential", "onepassword", "azure_vault_credential",
})
# `{{ name }}` or `{{ name | default(<literal>[, true|false]) }}`, nothing else around it.
_PLAIN_TEMPLATE = re.compile(
    r"""^\s*\{\{-?\s*(?P<name>[A-Za-z_][A-Za-z0-9_]*)\s*
        (?:\|\s*(?:default|d)\s*\(\s*(?P<default>'[^'\\]*'|"[^"\\]*"|-?\d+(?:\.\d+)?)
           \s*(?:,\s*(?:true|false|True|False)\s*)?\)\s*)?
        -?\}\}\s*$""",
    re.VERBOSE,
)
_TEMPLATE_MARK = re.compile(r"\{\{|\{%|\{#")
_EDITOR_HINT: Final = (
    "in Skyvern's editor, open the block that signs in and set its {field} to {{{{ {param} }}}}, add a "
    "string parameter {param} to the agent, then launch again (or pass --no-inspect to start it anyway)"
)


class WiringError(ValueError):
    """The agent cannot get our codes as launched; the message is one line naming what to change."""


class AgentDefinitionError(WiringError):
    """Skyvern's answer for the agent is not a workflow definition we can read."""


class NoTotpBlock(WiringError):
    """No block would ever ask for a code in this mode."""


class StaticValueMismatch(WiringError):
    """A block holds a fixed identifier or URL that is not ours."""


class UnfillableField(WiringError):
    """A block's TOTP field is an expression, names an undeclared parameter, or comes from a credential."""


class ParameterConflict(WiringError):
    """The user's --param for a TOTP parameter disagrees with what this launch must put there."""


class MissingParameter(WiringError):
    """A declared parameter has no value and no default: Skyvern would answer 400 before any run."""


# --- reading the definition ----------------------------------------------------------------------


@dataclass(frozen=True)
class AgentParameter:
    key: str
    parameter_type: str  # workflow, credential, output, context, aws_secret, ...
    value_type: str | None  # workflow parameters: string, integer, json, credential_id, ...
    default: Any = None

    @property
    def is_input(self) -> bool:
        """A parameter the run request fills (Skyvern's WorkflowParameter)."""
        return self.parameter_type == "workflow"

    @property
    def is_credential(self) -> bool:
        return self.parameter_type in CREDENTIAL_PARAMETER_TYPES or self.value_type == "credential_id"

    @property
    def required(self) -> bool:
        """No default and not an at-will credential: Skyvern's 'Missing value for parameter'."""
        return self.is_input and self.default is None and self.value_type != "credential_id"


@dataclass(frozen=True)
class TotpBlock:
    """A block with TOTP fields as the definition holds them (before templating)."""

    label: str
    block_type: str
    identifier: str | None
    url: str | None
    parameter_keys: tuple[str, ...] = ()
    inside: tuple[str, ...] = ()  # labels of the loops around it

    def raw(self, name: str) -> str | None:
        return self.identifier if name == IDENTIFIER_FIELD else self.url

    @property
    def where(self) -> str:
        outer = "".join(f" in loop {label!r}" for label in reversed(self.inside))
        return f"block {self.label!r} ({self.block_type}){outer}"


@dataclass(frozen=True)
class AgentDefinition:
    agent_id: str
    title: str
    parameters: dict[str, AgentParameter]
    blocks: tuple[TotpBlock, ...]  # every block carrying a TOTP field, or a credential, or of type login


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value.strip() else None


def _walk(blocks: Any, inside: tuple[str, ...]) -> Iterator[tuple[Mapping[str, Any], tuple[str, ...]]]:
    for block in blocks if isinstance(blocks, list) else ():
        if not isinstance(block, Mapping):
            continue
        yield block, inside
        label = str(block.get("label") or "?")
        for name in NESTED_BLOCK_LISTS:
            yield from _walk(block.get(name), (*inside, label))


def _block_parameter_keys(block: Mapping[str, Any]) -> tuple[str, ...]:
    keys = [k for k in block.get("parameter_keys") or () if isinstance(k, str)]
    keys += [p["key"] for p in block.get("parameters") or () if isinstance(p, Mapping) and isinstance(p.get("key"), str)]
    return tuple(dict.fromkeys(keys))


def read_agent(agent_id: str, workflow: Any) -> AgentDefinition:
    """The parts of `GET /v1/workflows/{wpid}` (or a `json_definition`) that wiring needs."""
    if not isinstance(workflow, Mapping):
        raise AgentDefinitionError(f"Skyvern's answer for agent {agent_id} is not an object")
    definition = workflow.get("workflow_definition", workflow)
    if not isinstance(definition, Mapping) or not isinstance(definition.get("blocks"), list):
        raise AgentDefinitionError(f"Skyvern's answer for agent {agent_id} has no workflow_definition.blocks")
    parameters: dict[str, AgentParameter] = {}
    for item in definition.get("parameters") or ():
        if isinstance(item, Mapping) and isinstance(item.get("key"), str):
            parameters[item["key"]] = AgentParameter(
                item["key"], str(item.get("parameter_type") or "workflow"),
                item.get("workflow_parameter_type"), item.get("default_value"))
    blocks = []
    for block, inside in _walk(definition["blocks"], ()):
        identifier, url = _text(block.get(IDENTIFIER_FIELD)), _text(block.get(URL_FIELD))
        keys = _block_parameter_keys(block)
        has_credential = any(k in parameters and parameters[k].is_credential for k in keys)
        if identifier or url or has_credential or block.get("block_type") == "login":
            blocks.append(TotpBlock(str(block.get("label") or "?"), str(block.get("block_type") or "?"),
                                    identifier, url, keys, inside))
    title = workflow.get("title") if isinstance(workflow.get("title"), str) else ""
    return AgentDefinition(agent_id, title, parameters, tuple(blocks))


# --- reading one field ---------------------------------------------------------------------------


@dataclass(frozen=True)
class FieldReading:
    """What Skyvern will make of one TOTP field."""

    kind: str  # empty | static | parameter | expression | credential
    raw: str | None = None
    parameter: str | None = None
    fallback: str | None = None  # the `| default(...)` literal

    @property
    def shown(self) -> str:
        return repr(self.raw) if self.raw is not None else "nothing"


def read_field(block: TotpBlock, name: str, parameters: Mapping[str, AgentParameter]) -> FieldReading:
    raw = block.raw(name)
    if raw is None:
        credentials = [k for k in block.parameter_keys if k in parameters and parameters[k].is_credential]
        if name == IDENTIFIER_FIELD and credentials:
            return FieldReading("credential", None, credentials[0])
        return FieldReading("empty")
    match = _PLAIN_TEMPLATE.fullmatch(raw)
    if match:
        default = match.group("default")
        literal = default[1:-1] if default and default[0] in "'\"" else default
        return FieldReading("parameter", raw, match.group("name"), literal)
    if _TEMPLATE_MARK.search(raw):
        return FieldReading("expression", raw)
    if name == IDENTIFIER_FIELD and raw.strip() in parameters:  # Skyvern puts a bare key's value there
        return FieldReading("parameter", raw, raw.strip())
    return FieldReading("static", raw)


# --- the plan ------------------------------------------------------------------------------------


def shown_url(url: str) -> str:
    """A URL for messages: query values (a per-identifier token) are masked."""
    parts = urlsplit(url)
    if not parts.query:
        return url
    query = "&".join(f"{k}=***" for k, _ in parse_qsl(parts.query, keep_blank_values=True))
    return parts._replace(query=query).geturl()


def same_url(a: str, b: str) -> bool:
    """Equal as Skyvern would call them: a missing scheme is https, host case and default ports ignored."""
    def key(url: str) -> tuple[Any, ...]:
        url = url.strip()
        if "://" not in url:
            url = "https://" + url
        parts = urlsplit(url)
        port = parts.port or {"http": 80, "https": 443}.get(parts.scheme.lower())
        return (parts.scheme.lower(), (parts.hostname or "").lower(), port, unquote(parts.path or "/"),
                sorted(parse_qsl(parts.query, keep_blank_values=True)))
    try:
        return key(a) == key(b)
    except ValueError:
        return False


@dataclass(frozen=True)
class WiringStep:
    """One field of one block and where its value comes from."""

    block: str
    block_type: str
    field: str
    source: str  # filled | given | default | static | cleared
    value: str
    parameter: str | None = None
    where: str = ""

    def describe(self) -> str:
        shown = shown_url(self.value) if self.field == URL_FIELD else self.value
        shown = repr(shown) if not shown else shown
        target = f"parameters.{self.parameter}" if self.parameter else "static"
        what = {"given": " (your --param)", "default": " (the template's default)",
                "cleared": " (no pull in push mode)"}.get(self.source, "")
        return f"{self.where or repr(self.block)}: {self.field} <- {target} = {shown}{what}"

    def to_json(self) -> dict[str, Any]:
        return {"block": self.block, "block_type": self.block_type, "field": self.field, "source": self.source,
                "parameter": self.parameter, "value": shown_url(self.value) if self.field == URL_FIELD else self.value}


@dataclass
class WiringPlan:
    """What a launch puts in `parameters`, and why, block by block."""

    agent_id: str
    mode: str
    parameters: dict[str, Any] = field(default_factory=dict)  # to merge into the run's parameters
    steps: list[WiringStep] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        return [step.describe() for step in self.steps] + [f"note: {note}" for note in self.notes]

    def to_json(self) -> dict[str, Any]:
        return {"agent_id": self.agent_id, "mode": self.mode, "parameters": sorted(self.parameters),
                "steps": [s.to_json() for s in self.steps], "notes": list(self.notes)}


def _hint(mode: str) -> str:
    field_name = FIELD_FOR_MODE[mode]
    return _EDITOR_HINT.format(field=field_name, param="totp_url" if mode == "url" else "totp_identifier")


class _Planner:
    def __init__(self, agent: AgentDefinition, mode: str, identifier: str, our_url: str,
                 given: Mapping[str, Any], totp_param: str | None):
        if mode not in FIELD_FOR_MODE:
            raise WiringError(f"--mode must be url or push (got {mode!r})")
        self.agent, self.mode, self.given, self.totp_param = agent, mode, given, totp_param
        self.identifier = normalize_identifier(identifier)
        self.ours = {IDENTIFIER_FIELD: self.identifier, URL_FIELD: our_url}
        self.plan = WiringPlan(agent.agent_id, mode)

    def matches(self, name: str, value: Any) -> bool:
        if not isinstance(value, str):
            return False
        if name == URL_FIELD:
            return same_url(value, self.ours[URL_FIELD])
        return normalize_identifier(value) == self.identifier

    def step(self, block: TotpBlock, name: str, source: str, value: str, parameter: str | None = None) -> None:
        self.plan.steps.append(WiringStep(block.label, block.block_type, name, source, value, parameter, block.where))

    def fill(self, name: str, parameter: str, value: str) -> None:
        previous = self.plan.parameters.get(parameter)
        if previous is not None and previous != value:
            raise ParameterConflict(f"parameter {parameter!r} is read both as a {IDENTIFIER_FIELD} and as a "
                                    f"{URL_FIELD}: give the agent one parameter for each")
        self.plan.parameters[parameter] = value

    def wire(self, block: TotpBlock, name: str) -> bool:
        """This mode's field of one block: True when it will read our codes."""
        reading = read_field(block, name, self.agent.parameters)
        label = f"{block.where}: {name} = {reading.shown}"
        ours = self.ours[name]
        if reading.kind == "empty":
            return False
        if reading.kind == "credential":
            raise UnfillableField(
                f"{block.where} takes its {name} from the credential in parameter {reading.parameter!r}, which "
                f"the launcher cannot see: set {name} on the block to {{{{ totp_identifier }}}}, or make sure the "
                f"credential's TOTP identifier is {self.identifier!r} and pass --no-inspect")
        if reading.kind == "expression":
            raise UnfillableField(
                f"{label} is an expression the launcher cannot fill: make it a plain {{{{ parameter }}}}, or "
                f"pass --totp-param NAME to put {'our totp_url' if name == URL_FIELD else 'the identifier'} in "
                "parameters[NAME] and check the result yourself")
        if reading.kind == "static":
            if not self.matches(name, reading.raw):
                wanted = shown_url(ours) if name == URL_FIELD else ours
                raise StaticValueMismatch(
                    f"{label} is fixed and is not {wanted!r}: change it in Skyvern's editor to {wanted} or to "
                    f"a {{{{ parameter }}}}, or launch with the {'identifier' if name == IDENTIFIER_FIELD else 'service'} "
                    "the block names")
            self.step(block, name, "static", ours)
            return True
        parameter = reading.parameter or ""
        declared = self.agent.parameters.get(parameter)
        if declared is None or not declared.is_input:
            if reading.fallback is not None and self.matches(name, reading.fallback):
                self.step(block, name, "default", ours)
                return True
            raise UnfillableField(
                f"{label} names {parameter!r}, which the agent does not declare as a parameter, so Skyvern renders "
                f"it {'as ' + repr(reading.fallback) if reading.fallback is not None else 'empty'}: add a string "
                f"parameter {parameter!r} to the agent in Skyvern's editor")
        if parameter in self.given:
            if not self.matches(name, self.given[parameter]):
                raise ParameterConflict(
                    f"--param {parameter}=… disagrees with this launch: {block.where} reads its {name} from it and "
                    f"must get {shown_url(ours) if name == URL_FIELD else ours!r}; drop the --param")
            self.step(block, name, "given", ours, parameter)
            return True
        self.fill(name, parameter, ours)
        self.step(block, name, "filled", ours, parameter)
        return True

    def other_field(self, block: TotpBlock) -> None:
        """The field of the other mode: keep it from failing the request or the polls."""
        name = URL_FIELD if self.mode == "push" else IDENTIFIER_FIELD
        reading = read_field(block, name, self.agent.parameters)
        if reading.kind != "parameter":
            if self.mode == "push" and reading.kind in ("static", "expression"):
                self.plan.notes.append(f"{block.where} also asks {shown_url(reading.raw or '')} on every poll; "
                                       "Skyvern reads pushed codes only when that answers no code")
            return
        parameter = reading.parameter or ""
        declared = self.agent.parameters.get(parameter)
        if declared is None or not declared.required or parameter in self.given or parameter in self.plan.parameters:
            return
        value = "" if self.mode == "push" else self.identifier  # url mode: the identifier is often the login too
        self.fill(name, parameter, value)
        self.step(block, name, "cleared" if self.mode == "push" else "filled", value, parameter)

    def run(self) -> WiringPlan:
        if not self.totp_param:
            self.wire_blocks()
        else:  # the user names the parameter: wire what we can as well, refuse only a contradiction
            try:
                self.wire_blocks()
            except (NoTotpBlock, StaticValueMismatch, UnfillableField) as exc:
                self.plan = WiringPlan(self.agent.agent_id, self.mode)
                self.plan.notes.append(f"going ahead because of --totp-param: {exc}")
            self.override(FIELD_FOR_MODE[self.mode])
        self.check_missing()
        return self.plan

    def wire_blocks(self) -> None:
        name = FIELD_FOR_MODE[self.mode]
        asking = [b for b in self.agent.blocks if b.identifier or b.url or read_field(b, IDENTIFIER_FIELD,
                                                                                      self.agent.parameters).kind == "credential"]
        if not asking:
            logins = [b.where for b in self.agent.blocks]
            which = f" ({', '.join(logins)} has none)" if logins else ""
            raise NoTotpBlock(f"agent {self.agent.agent_id}: no block has a {IDENTIFIER_FIELD} or "
                              f"{URL_FIELD}{which}, so no block will ever ask for a code: {_hint(self.mode)}")
        wired = [block for block in asking if self.wire(block, name)]
        if not wired:
            other = "pulls from a URL and never reads pushed codes" if self.mode == "push" else \
                "reads pushed codes only and never pulls a URL"
            blocks = ", ".join(b.where for b in asking)
            raise NoTotpBlock(f"agent {self.agent.agent_id}: {blocks} {other}; use --mode "
                              f"{'url' if self.mode == 'push' else 'push'}, or: {_hint(self.mode)}")
        for block in wired:
            self.other_field(block)

    def override(self, name: str) -> None:
        """--totp-param NAME: the value goes to parameters[NAME] whatever the blocks say."""
        parameter = self.totp_param or ""
        self.fill(name, parameter, self.ours[name])
        readers = [b for b in self.agent.blocks if read_field(b, name, self.agent.parameters).parameter == parameter]
        if not any(step.parameter == parameter for step in self.plan.steps):
            for block in readers:
                self.step(block, name, "filled", self.ours[name], parameter)
        if not readers:
            self.plan.notes.append(f"--totp-param {parameter}: no block's {name} is {{{{ {parameter} }}}}; "
                                   "the value is passed anyway")
        if parameter not in self.agent.parameters:
            self.plan.notes.append(f"the agent declares no parameter {parameter!r}: Skyvern ignores it")

    def check_missing(self) -> None:
        missing = [p.key for p in self.agent.parameters.values()
                   if p.required and p.key not in self.plan.parameters
                   and (p.key not in self.given or self.given[p.key] is None)]
        if missing:
            names = ", ".join(sorted(missing))
            flags = " ".join(f"--param {key}=VALUE" for key in sorted(missing))
            raise MissingParameter(f"agent {self.agent.agent_id} needs a value for parameter(s) {names} (no default): "
                                   f"pass {flags}; Skyvern would answer 400 Missing value for parameter")


def plan_wiring(
    agent: AgentDefinition,
    mode: str,
    identifier: str,
    our_totp_url: str,
    parameters: Mapping[str, Any] | None = None,
    *,
    totp_param: str | None = None,
) -> WiringPlan:
    """How to launch `agent` so its blocks read codes for `identifier` in `mode`; raises WiringError."""
    return _Planner(agent, mode, identifier, our_totp_url, dict(parameters or {}), totp_param).run()
