"""Mixed versions during a rollout: this agent accepts every document the previous agent (0.1.0) accepted —
desired sections of the classic shadow, settings of the config shadow, job documents — and says which
shadow contract it speaks (``reported.versions.contract``).

The fixture (``fixtures/contract-0.1.0``) holds the 0.1.0 agent's published schemas, frozen, and documents
valid under them; each must also be valid for this agent."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from agent.commands import validate_sections
from agent.features.update import CONTRACT
from agent.jobs.document import RobotPlan, parse

FIXTURE = Path(__file__).parent / "fixtures" / "contract-0.1.0"
DOCS = json.loads((FIXTURE / "documents.json").read_text())


def frozen(name: str) -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(json.loads((FIXTURE / f"{name}.schema.json").read_text()))


@pytest.mark.parametrize("doc", DOCS["desired"], ids=lambda d: ",".join(d))
def test_desired_documents_of_0_1_0_are_accepted(doc: dict[str, Any]) -> None:
    # the fixture is what 0.1.0 took (it skips a null section, as this agent does: a shadow delete)
    assert list(frozen("desired").iter_errors({k: v for k, v in doc.items() if v is not None})) == []
    assert validate_sections("desired", doc) == {}


@pytest.mark.parametrize("doc", DOCS["config"], ids=lambda d: ",".join(d))
def test_config_shadow_documents_of_0_1_0_are_accepted(doc: dict[str, Any]) -> None:
    assert list(frozen("config").iter_errors(doc)) == []
    assert validate_sections("config", doc) == {}


@pytest.mark.parametrize("doc", DOCS["jobs"], ids=lambda d: str(d.get("operation") or "device-client"))
def test_job_documents_of_0_1_0_are_accepted(doc: dict[str, Any]) -> None:
    if "operation" in doc:
        assert list(frozen("job-robot").iter_errors(doc)) == []
    plan = parse(doc, model="create2", allow_commands=True, handler_dir=None)
    assert not hasattr(plan, "reason"), plan
    if isinstance(plan, RobotPlan):
        assert plan.operation == doc["operation"]


def test_this_agent_speaks_contract_2() -> None:
    """1 was the 0.1.0 agent's (``reported.versions`` with agent and firmware only); 2 adds previous,
    trial, update and contract, which a 0.1.0 fleet tool ignores."""
    assert CONTRACT == 2
