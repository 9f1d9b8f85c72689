"""The AWS IoT policy grants a robot exactly its own CONTRACTS.md topics; the JITP template is well formed."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from provisioning.aws import (
    JOBS_REQUESTS,
    POLICY_MAX_CHARS,
    device_policy,
    jitp_template,
    policy_size,
    registration_config,
)

FIXTURES = Path(__file__).parent / "fixtures"


def allowed(policy: dict[str, Any], action: str, resource: str, thing: str) -> bool:
    """AWS IoT policy matching for our statements: '*' and '?' wildcards, the thing-name variable."""
    for statement in policy["Statement"]:
        actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
        if action not in actions:
            continue
        resources = (
            statement["Resource"] if isinstance(statement["Resource"], list) else [statement["Resource"]]
        )
        for pattern in resources:
            concrete = pattern.replace("${iot:Connection.Thing.ThingName}", thing)
            regex = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in concrete)
            if re.fullmatch(regex, resource):
                return True
    return False


ARN = "arn:aws:iot:eu-west-1:123456789012"


@pytest.fixture
def policy() -> dict[str, Any]:
    return device_policy("aws")


@pytest.mark.parametrize(
    ("action", "resource"),
    [
        ("iot:Connect", "client/robot-1"),
        ("iot:Publish", "topic/$aws/things/robot-1/shadow/update"),
        ("iot:Publish", "topic/$aws/things/robot-1/shadow/get"),
        ("iot:Publish", "topic/$aws/things/robot-1/shadow/name/robot/update"),
        ("iot:Publish", "topic/$aws/things/robot-1/shadow/name/config/get"),
        ("iot:Publish", "topic/$aws/things/robot-1/jobs/get"),
        ("iot:Publish", "topic/$aws/things/robot-1/jobs/start-next"),
        ("iot:Publish", "topic/$aws/things/robot-1/jobs/job-42/get"),
        ("iot:Publish", "topic/$aws/things/robot-1/jobs/$next/get"),
        ("iot:Publish", "topic/$aws/things/robot-1/jobs/job-42/update"),
        ("iot:Publish", "topic/roomba/robot-1/telemetry"),
        ("iot:Publish", "topic/roomba/robot-1/events"),
        ("iot:Publish", "topic/roomba/robot-1/metrics"),
        ("iot:Publish", "topic/roomba/robot-1/presence"),
        ("iot:RetainPublish", "topic/roomba/robot-1/presence"),
        ("iot:Subscribe", "topicfilter/$aws/things/robot-1/shadow/update/delta"),
        ("iot:Subscribe", "topicfilter/$aws/things/robot-1/shadow/get/+"),
        ("iot:Subscribe", "topicfilter/$aws/things/robot-1/shadow/name/robot/update/+"),
        ("iot:Subscribe", "topicfilter/$aws/things/robot-1/jobs/notify-next"),
        ("iot:Subscribe", "topicfilter/$aws/things/robot-1/jobs/$next/get/+"),
        ("iot:Subscribe", "topicfilter/$aws/things/robot-1/jobs/start-next/+"),
        ("iot:Subscribe", "topicfilter/$aws/things/robot-1/shadow/name/config/update/documents"),
        ("iot:Receive", "topic/$aws/things/robot-1/shadow/update/accepted"),
        ("iot:Receive", "topic/$aws/things/robot-1/shadow/name/config/get/rejected"),
        ("iot:Receive", "topic/$aws/things/robot-1/jobs/notify"),
        ("iot:Receive", "topic/$aws/things/robot-1/jobs/notify-next"),
    ],
)
def test_policy_allows_the_agents_topics(policy: dict[str, Any], action: str, resource: str) -> None:
    """Every topic the agent uses is allowed for its own thing, with any named shadow or the pinned one."""
    assert allowed(policy, action, f"{ARN}:{resource}", "robot-1")
    pinned = device_policy("aws", "eu-west-1", "123456789012", ("config",))
    if "/shadow/name/" not in resource or "/name/config/" in resource:
        assert allowed(pinned, action, f"{ARN}:{resource}", "robot-1")


@pytest.mark.parametrize(
    ("action", "resource"),
    [
        ("iot:Connect", "client/robot-2"),
        ("iot:Publish", "topic/$aws/things/robot-2/shadow/update"),
        ("iot:Publish", "topic/$aws/things/robot-1/shadow/delete"),
        ("iot:Publish", "topic/$aws/things/robot-1/shadow/name/robot/delete"),
        ("iot:Publish", "topic/roomba/robot-2/telemetry"),
        ("iot:Publish", "topic/roomba/robot-1/other"),
        ("iot:Publish", "topic/roomba/robot-1/telemetry/x"),
        ("iot:Publish", "topic/$aws/things/robot-1/jobs/notify"),
        ("iot:Publish", "topic/$aws/things/robot-1/jobs/notify-next"),
        ("iot:Publish", "topic/$aws/things/robot-1/jobs/get/accepted"),
        ("iot:Publish", "topic/$aws/things/robot-1/shadow/update/accepted"),
        ("iot:Publish", "topic/$aws/things/robot-2/jobs/start-next"),
        ("iot:Publish", "topic/$aws/things/robot-1/tunnels/notify"),
        ("iot:RetainPublish", "topic/roomba/robot-1/telemetry"),
        ("iot:Subscribe", "topicfilter/$aws/things/+/shadow/update/delta"),
        ("iot:Subscribe", "topicfilter/#"),
        ("iot:Receive", "topic/$aws/things/robot-2/shadow/update/accepted"),
        ("iot:Receive", "topic/roomba/robot-2/presence"),
        ("iot:Subscribe", "topicfilter/$aws/things/robot-2/jobs/notify"),
        ("iot:Connect", "client/robot-1x"),
    ],
)
def test_policy_denies_everything_else(policy: dict[str, Any], action: str, resource: str) -> None:
    """Other robots' topics, shadow delete, responses, wildcard filters and unknown topics are denied."""
    assert not allowed(policy, action, f"{ARN}:{resource}", "robot-1")


def test_policy_connect_needs_attached_thing(policy: dict[str, Any]) -> None:
    """Connect requires the certificate to be attached to the thing (no thing, no connection)."""
    connect = policy["Statement"][0]
    assert connect["Condition"] == {"Bool": {"iot:Connection.Thing.IsAttached": "true"}}


@pytest.mark.parametrize("partition", ["aws", "aws-cn", "aws-us-gov"])
@pytest.mark.parametrize("shadows", [("*",), ("config",)], ids=["any-shadow", "config-shadow"])
def test_policy_fits_in_every_partition(partition: str, shadows: tuple[str, ...]) -> None:
    """Every partition's ARNs, and the policy stays under AWS's 2048-character limit."""
    policy = device_policy(partition, shadow_names=shadows)
    resources = [
        r
        for s in policy["Statement"]
        for r in (s["Resource"] if isinstance(s["Resource"], list) else [s["Resource"]])
    ]
    assert all(r.startswith(f"arn:{partition}:iot:*:*:") for r in resources)
    assert policy_size(policy) <= POLICY_MAX_CHARS


def test_pinned_named_shadow_excludes_others() -> None:
    """Pinning ``--shadow config`` denies every other named shadow."""
    pinned = device_policy("aws", shadow_names=("config",))
    arn = "arn:aws:iot:us-east-1:123456789012"
    assert allowed(pinned, "iot:Publish", f"{arn}:topic/$aws/things/r/shadow/name/config/update", "r")
    assert not allowed(pinned, "iot:Publish", f"{arn}:topic/$aws/things/r/shadow/name/robot/update", "r")


def test_policy_cli(run_cli) -> None:
    """The CLI prints the API's policy; too many shadows or a named region/account past 2048 is one line."""
    result = run_cli("aws", "policy", "--partition", "aws-cn", "--shadow", "config")
    assert result.returncode == 0, result.stderr
    policy = json.loads(result.stdout)
    assert policy["Statement"][0]["Resource"] == "arn:aws-cn:iot:*:*:client/${iot:Connection.Thing.ThingName}"
    assert policy == device_policy("aws-cn", shadow_names=("config",))
    many = ["--shadow", "a", "--shadow", "b", "--shadow", "c", "--shadow", "d"]
    result = run_cli("aws", "policy", "--partition", "aws-cn", *many)
    assert result.returncode == 1 and "allows 2048" in result.stderr and "fewer --shadow" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    explicit = ["--region", "cn-north-1", "--account", "111122223333"]
    result = run_cli("aws", "policy", "--partition", "aws-cn", *explicit)
    assert result.returncode == 1 and "leave --region and --account at '*'" in result.stderr


def test_jitp_template_and_registration_config(run_cli) -> None:
    """JITP uses only CN and certificate id, keeps an operator's choices, wraps as --registration-config."""
    template = jitp_template("roomba-agent")
    assert template["Resources"]["thing"]["Properties"]["ThingName"] == {
        "Ref": "AWS::IoT::Certificate::CommonName"
    }
    assert template["Resources"]["certificate"]["Properties"]["Status"] == "ACTIVE"
    assert template["Resources"]["policy"]["Properties"]["PolicyName"] == "roomba-agent"
    assert set(template["Parameters"]) == {"AWS::IoT::Certificate::CommonName", "AWS::IoT::Certificate::Id"}
    assert template["Resources"]["certificate"]["Properties"]["CertificateId"] == {
        "Ref": "AWS::IoT::Certificate::Id"
    }
    assert template["Resources"]["certificate"]["OverrideSettings"] == {"Status": "DO_NOTHING"}
    assert template["Resources"]["thing"]["OverrideSettings"]["ThingTypeName"] == "DO_NOTHING"
    assert "ThingTypeName" not in template["Resources"]["thing"]["Properties"]
    typed = jitp_template("roomba-agent", "roomba-600")
    assert typed["Resources"]["thing"]["Properties"]["ThingTypeName"] == "roomba-600"
    assert typed["Resources"]["thing"]["OverrideSettings"]["ThingTypeName"] == "REPLACE"
    refs = re.findall(r'"Ref": "([^"]+)"', json.dumps(template))
    assert set(refs) == set(template["Parameters"])
    config = registration_config(template, "arn:aws-cn:iam::111122223333:role/JITPRole")
    assert json.loads(config["templateBody"]) == template
    result = run_cli("aws", "jitp-template", "--role-arn", "arn:aws:iam::111122223333:role/JITPRole")
    assert result.returncode == 0 and json.loads(json.loads(result.stdout)["templateBody"]) == template


@pytest.mark.parametrize(
    ("args", "golden"),
    [
        pytest.param(("aws", "policy"), "device_policy.json", id="policy"),
        pytest.param(
            ("aws", "policy", "--partition", "aws-cn", "--shadow", "config"),
            "device_policy_aws-cn_config.json",
            id="policy_aws_cn_pinned",
        ),
        pytest.param(("aws", "jitp-template"), "jitp_template.json", id="jitp_template"),
    ],
)
def test_cli_output_is_byte_identical_to_the_golden_file(run_cli, args: tuple[str, ...], golden: str) -> None:
    """What an operator pastes into AWS must not change by a byte when the code behind it is refactored."""
    result = run_cli(*args)
    assert result.returncode == 0, result.stderr
    assert result.stdout == (FIXTURES / golden).read_text()


def test_policy_jobs_requests_are_the_device_topics_in_policy_syntax() -> None:
    """MQTT's ``+`` is a literal in a policy resource: the job-id level must be ``*`` there."""
    assert JOBS_REQUESTS == ("get", "start-next", "*/get", "*/update")
