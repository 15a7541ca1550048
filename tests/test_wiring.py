"""Wiring a saved agent's blocks (pure functions: definition in, plan or one-line refusal out)."""

from __future__ import annotations

from typing import Any

import pytest

from totp_service.launcher.wiring import (
    AgentDefinitionError,
    MissingParameter,
    NoTotpBlock,
    ParameterConflict,
    StaticValueMismatch,
    UnfillableField,
    plan_wiring,
    read_agent,
    same_url,
    shown_url,
)

AGENT = "wpid_login"
ME = "alice@example.com"
URL = "http://127.0.0.1:8080/totp/alice%40example.com"


def param(key: str, default: Any = None, kind: str = "string", parameter_type: str = "workflow") -> dict[str, Any]:
    return {"key": key, "parameter_type": parameter_type, "workflow_parameter_type": kind, "default_value": default}


def login(label: str = "sign_in", block_type: str = "login", **fields: Any) -> dict[str, Any]:
    return {"block_type": block_type, "label": label, "navigation_goal": "sign in", **fields}


def agent(blocks: list[dict[str, Any]], parameters: list[dict[str, Any]] | None = None) -> Any:
    workflow = {"workflow_permanent_id": AGENT, "title": "t",
                "workflow_definition": {"parameters": parameters or [], "blocks": blocks}}
    return read_agent(AGENT, workflow)


def plan(definition: Any, mode: str = "push", given: dict[str, Any] | None = None, **kw: Any) -> Any:
    return plan_wiring(definition, mode, ME, URL, given, **kw)


def test_templated_identifier_is_filled_in_push_mode() -> None:
    result = plan(agent([login(totp_identifier="{{ login_id }}")], [param("login_id")]))
    assert result.parameters == {"login_id": ME}
    assert result.lines() == [f"block 'sign_in' (login): totp_identifier <- parameters.login_id = {ME}"]


def test_templated_url_is_filled_in_url_mode_and_other_field_kept_valid() -> None:
    definition = agent([login(totp_identifier="{{ who }}", totp_verification_url="{{otp_url}}")],
                       [param("who"), param("otp_url")])
    result = plan(definition, "url")
    assert result.parameters == {"otp_url": URL, "who": ME}
    pushed = plan(definition, "push")
    assert pushed.parameters == {"who": ME, "otp_url": ""}  # no pull: the poll would fail and skip pushed codes
    assert "(no pull in push mode)" in pushed.lines()[1]


def test_default_filter_nested_block_and_bare_key() -> None:
    loop = {"block_type": "for_loop", "label": "each", "loop_over_parameter_key": "items",
            "loop_blocks": [login(totp_identifier="{{ login_id | default('x@example.com') }}")]}
    result = plan(agent([loop], [param("login_id", "x@example.com"), param("items", [], "json")]))
    assert result.parameters == {"login_id": ME}
    assert result.steps[0].where == "block 'sign_in' (login) in loop 'each'"
    bare = plan(agent([login(block_type="navigation", totp_identifier="login_id")], [param("login_id")]))
    assert bare.parameters == {"login_id": ME}


def test_user_param_that_agrees_is_kept_and_one_that_disagrees_is_refused() -> None:
    definition = agent([login(totp_identifier="{{ login_id }}")], [param("login_id")])
    agreed = plan(definition, given={"login_id": " Alice@Example.com "})
    assert agreed.parameters == {} and agreed.steps[0].source == "given"
    with pytest.raises(ParameterConflict, match="login_id"):
        plan(definition, given={"login_id": "bob@example.com"})


def test_static_values() -> None:
    assert plan(agent([login(totp_identifier="ALICE@example.com")])).steps[0].source == "static"
    with pytest.raises(StaticValueMismatch, match="'bob@example.com'"):
        plan(agent([login(totp_identifier="bob@example.com")]))
    assert plan(agent([login(totp_verification_url="HTTP://127.0.0.1:8080/totp/alice%40example.com")]), "url").steps
    with pytest.raises(StaticValueMismatch):  # Skyvern prepends https:// to a URL without a scheme
        plan(agent([login(totp_verification_url="127.0.0.1:8080/totp/alice%40example.com")]), "url")
    with pytest.raises(StaticValueMismatch, match="is fixed"):
        plan(agent([login(totp_verification_url="https://other.example/totp")]), "url")


@pytest.mark.parametrize("fields, words", [
    ({"totp_identifier": "{{ user }}@{{ domain }}"}, "expression"),
    ({"totp_identifier": "{{ login_id | lower }}"}, "--totp-param"),
    ({"totp_identifier": "{{ nobody }}"}, "does not declare"),
    ({"parameter_keys": ["cred"]}, "credential"),
])
def test_fields_we_cannot_fill(fields: dict[str, Any], words: str) -> None:
    parameters = [param("login_id"), param("cred", parameter_type="credential", kind=None)]
    with pytest.raises(UnfillableField, match=words) as caught:
        plan(agent([login(**fields)], parameters))
    assert "'sign_in'" in str(caught.value) and "\n" not in str(caught.value)


def test_no_block_asks_or_only_the_other_mode() -> None:
    with pytest.raises(NoTotpBlock, match="no block will ever ask") as caught:
        plan(agent([login()]))
    assert "totp_identifier" in str(caught.value) and "--no-inspect" in str(caught.value)
    with pytest.raises(NoTotpBlock, match="never reads pushed codes"):
        plan(agent([login(totp_verification_url="{{ u }}")], [param("u")]))
    with pytest.raises(NoTotpBlock, match="never pulls"):
        plan(agent([login(totp_identifier="{{ who }}")], [param("who")]), "url")


def test_missing_declared_parameter_is_caught_before_any_run() -> None:
    definition = agent([login(totp_identifier="{{ login_id }}")], [param("login_id"), param("site"),
                                                                    param("cred", kind="credential_id")])
    with pytest.raises(MissingParameter, match="--param site=VALUE"):
        plan(definition)
    assert plan(definition, given={"site": "x"}).parameters == {"login_id": ME}


def test_totp_param_override() -> None:
    definition = agent([login(totp_identifier="{{ a ~ b }}")], [param("a"), param("b", "")])
    result = plan(definition, totp_param="a")
    assert result.parameters == {"a": ME}
    assert any("going ahead because of --totp-param" in note for note in result.notes)
    wired = plan(agent([login(totp_identifier="{{ login_id }}")], [param("login_id")]), totp_param="who")
    assert wired.parameters == {"login_id": ME, "who": ME}  # wired as usual, and NAME filled too
    assert any("Skyvern ignores it" in note for note in wired.notes)
    with pytest.raises(MissingParameter):
        plan(agent([login(totp_identifier="{{ x }}")], [param("x"), param("site")]), totp_param="x")


def test_bad_definitions_and_urls() -> None:
    with pytest.raises(AgentDefinitionError):
        read_agent(AGENT, {"workflow_definition": {"blocks": "x"}})
    assert same_url("HTTP://127.0.0.1:80/totp/a?k=1", "http://127.0.0.1/totp/a?k=1")
    assert not same_url("http://127.0.0.1/totp/a?k=1", "http://127.0.0.1/totp/a?k=2")
    assert shown_url("http://h/totp/a?k=secret") == "http://h/totp/a?k=***"
