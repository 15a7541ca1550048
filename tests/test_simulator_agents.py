"""The simulator's saved agents: Skyvern 1.0.56's block templating and parameter rules."""

from __future__ import annotations

from typing import Any

import pytest

from totp_service.simulator_agents import (
    DefinitionInvalid,
    MissingValue,
    RenderFailed,
    asking_blocks,
    block_sources,
    make_workflow,
    parameter_values,
    render,
)


def definition(blocks: list[dict[str, Any]], parameters: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {"title": "t", "workflow_definition": {"parameters": parameters or [], "blocks": blocks}}


def test_templating_is_lax_and_knows_default() -> None:
    values = {"login_id": "alice@example.com", "n": 3}
    assert render("{{ login_id }}", values) == "alice@example.com"
    assert render("{{undeclared}}", values) == ""
    assert render("{{ nope | default('x@example.com') }}", values) == "x@example.com"
    assert render("id-{{ n }}", values) == "id-3"
    with pytest.raises(RenderFailed):
        render("{{ login_id | lower }}", values)


def test_block_sources_bare_key_and_scheme() -> None:
    values = {"who": "bob", "otp": "totp.example/totp/bob"}
    sources = block_sources({"label": "a", "block_type": "login", "totp_identifier": "who",
                             "totp_verification_url": "{{ otp }}"}, values)
    assert (sources.identifier, sources.url) == ("bob", "https://totp.example/totp/bob")
    empty = block_sources({"label": "a", "block_type": "login", "totp_identifier": "{{ missing }}"}, values)
    assert (empty.identifier, empty.url) == (None, None)
    with pytest.raises(RenderFailed, match="Failed to render totp_identifier: evaluation."):
        block_sources({"label": "a", "block_type": "login", "totp_identifier": "{% if x %}y{% endif %}"}, values)


def test_parameters_missing_default_and_credential() -> None:
    workflow = make_workflow(definition([], [
        {"key": "a", "workflow_parameter_type": "string"},
        {"key": "b", "workflow_parameter_type": "string", "default_value": "B"},
        {"key": "c", "workflow_parameter_type": "credential_id"},
        {"key": "out", "parameter_type": "output"},
    ]))
    assert workflow["workflow_permanent_id"].startswith("wpid_") and workflow["workflow_id"].startswith("w_")
    assert parameter_values(workflow, {"a": ""}) == {"a": "", "b": "B"}  # an empty string is a value
    with pytest.raises(MissingValue, match=r"Missing value for parameter a in workflow wpid_"):
        parameter_values(workflow, {"b": "x"})


def test_asking_blocks_walks_loops_and_validates() -> None:
    workflow = make_workflow(definition([
        {"block_type": "navigation", "label": "home"},
        {"block_type": "for_loop", "label": "each", "loop_blocks": [
            {"block_type": "navigation", "label": "inner", "totp_identifier": "{{ who }}"}]},
        {"block_type": "login", "label": "plain"},
        {"block_type": "code", "label": "c", "totp_identifier": "x"},
    ]))
    assert [b["label"] for b in asking_blocks(workflow)] == ["inner", "plain"]
    for bad in (definition([{"label": "x"}]), definition([{"block_type": "login", "label": "x"}] * 2),
                {"workflow_definition": {}}, definition([{"block_type": "login", "label": "x", "totp_identifier": 5}])):
        with pytest.raises(DefinitionInvalid):
            make_workflow(bad)
