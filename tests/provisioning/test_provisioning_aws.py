"""The AWS IoT policy grants a robot exactly its own CONTRACTS.md topics; the JITP template is well formed."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from provisioning.aws import POLICY_MAX_CHARS, device_policy, jitp_template, policy_size, registration_config


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
    return device_policy("aws", "eu-west-1", "123456789012")


@pytest.mark.parametrize(
    ("action", "resource"),
    [
        ("iot:Connect", "client/robot-1"),
        ("iot:Publish", "topic/$aws/things/robot-1/shadow/update"),
        ("iot:Publish", "topic/$aws/things/robot-1/shadow/get"),
        ("iot:Publish", "topic/$aws/things/robot-1/shadow/name/robot/update"),
        ("iot:Publish", "topic/$aws/things/robot-1/shadow/name/config/get"),
        ("iot:Publish", "topic/$aws/things/robot-1/jobs/start-next"),
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
        ("iot:Receive", "topic/$aws/things/robot-1/shadow/update/accepted"),
        ("iot:Receive", "topic/$aws/things/robot-1/jobs/notify"),
    ],
)
def test_policy_allows_the_agents_topics(policy: dict[str, Any], action: str, resource: str) -> None:
    assert allowed(policy, action, f"{ARN}:{resource}", "robot-1")


@pytest.mark.parametrize(
    ("action", "resource"),
    [
        ("iot:Connect", "client/robot-2"),
        ("iot:Publish", "topic/$aws/things/robot-2/shadow/update"),
        ("iot:Publish", "topic/$aws/things/robot-1/shadow/delete"),
        ("iot:Publish", "topic/$aws/things/robot-1/shadow/name/robot/delete"),
        ("iot:Publish", "topic/roomba/robot-2/telemetry"),
        ("iot:Publish", "topic/roomba/robot-1/other"),
        ("iot:RetainPublish", "topic/roomba/robot-1/telemetry"),
        ("iot:Subscribe", "topicfilter/$aws/things/+/shadow/update/delta"),
        ("iot:Subscribe", "topicfilter/#"),
        ("iot:Receive", "topic/$aws/things/robot-2/shadow/update/accepted"),
    ],
)
def test_policy_denies_everything_else(policy: dict[str, Any], action: str, resource: str) -> None:
    assert not allowed(policy, action, f"{ARN}:{resource}", "robot-1")


def test_policy_connect_needs_attached_thing(policy: dict[str, Any]) -> None:
    connect = policy["Statement"][0]
    assert connect["Condition"] == {"Bool": {"iot:Connection.Thing.IsAttached": "true"}}


@pytest.mark.parametrize(
    ("partition", "region"), [("aws", "us-east-1"), ("aws-cn", "cn-north-1"), ("aws-cn", "cn-northwest-1")]
)
def test_policy_partitions_and_size(partition: str, region: str) -> None:
    policy = device_policy(partition, region, "123456789012")
    resources = [
        r
        for s in policy["Statement"]
        for r in (s["Resource"] if isinstance(s["Resource"], list) else [s["Resource"]])
    ]
    assert all(r.startswith(f"arn:{partition}:iot:{region}:123456789012:") for r in resources)
    assert policy_size(policy) <= POLICY_MAX_CHARS


def test_policy_cli(run_cli) -> None:
    result = run_cli(
        "aws", "policy", "--partition", "aws-cn", "--region", "cn-north-1", "--account", "111122223333"
    )
    assert result.returncode == 0
    assert json.loads(result.stdout)["Statement"][0]["Resource"].startswith(
        "arn:aws-cn:iot:cn-north-1:111122223333:"
    )
    many = ["--shadow", "a", "--shadow", "b", "--shadow", "c", "--shadow", "d"]
    result = run_cli(
        "aws", "policy", "--account", "111122223333", "--region", "cn-north-1", "--partition", "aws-cn", *many
    )
    assert result.returncode == 1 and "allows 2048" in result.stderr


def test_jitp_template_and_registration_config(run_cli) -> None:
    template = jitp_template("roomba-agent")
    assert template["Resources"]["thing"]["Properties"]["ThingName"] == {
        "Ref": "AWS::IoT::Certificate::CommonName"
    }
    assert template["Resources"]["certificate"]["Properties"]["Status"] == "ACTIVE"
    assert template["Resources"]["policy"]["Properties"]["PolicyName"] == "roomba-agent"
    assert set(template["Parameters"]) == {"AWS::IoT::Certificate::CommonName", "AWS::IoT::Certificate::Id"}
    config = registration_config(template, "arn:aws-cn:iam::111122223333:role/JITPRole")
    assert json.loads(config["templateBody"]) == template
    result = run_cli("aws", "jitp-template", "--role-arn", "arn:aws:iam::111122223333:role/JITPRole")
    assert result.returncode == 0 and json.loads(json.loads(result.stdout)["templateBody"]) == template
