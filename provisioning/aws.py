"""AWS IoT artifacts for the fleet: the least-privilege device policy and the JITP template.

Pure functions returning JSON-ready dicts. The policy grants a robot exactly the topics in docs/CONTRACTS.md
(shadows, jobs, roomba/<thing>/...), built by :mod:`shadow.topics` and all keyed on
``${iot:Connection.Thing.ThingName}``, so one policy serves every robot and none can touch another's topics.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from shadow import topics

PARTITIONS = ("aws", "aws-cn", "aws-us-gov")
THING = "${iot:Connection.Thing.ThingName}"
JOBS_REQUESTS = tuple(request.replace(topics.ANY, "*") for request in topics.JOBS_REQUESTS)
"""The Jobs request topics in policy syntax: in a policy resource MQTT's ``+`` and ``#`` are literal
characters and ``*`` is the wildcard (AWS IoT Core Developer Guide, "AWS IoT Core policy variables")."""
POLICY_MAX_CHARS = 2048


def _arn(partition: str, region: str, account: str, resource: str) -> str:
    return f"arn:{partition}:iot:{region}:{account}:{resource}"


def device_policy(
    partition: str = "aws",
    region: str = "*",
    account: str = "*",
    shadow_names: Sequence[str] = ("*",),
) -> dict[str, Any]:
    """The device policy: connect as its own thing, its shadows (classic + named), jobs and agent topics.

    Everything is scoped to the robot's own thing through the ``${iot:Connection.Thing.ThingName}`` policy
    variable, the thing attached to the connecting certificate; ``iot:Connection.Thing.IsAttached`` makes
    a certificate with no thing unable to connect (AWS IoT Core Developer Guide, "Thing policy variables"):

    - publish: shadow ``get``/``update`` (never ``delete``), the four Jobs request topics, and exactly
      ``roomba/<thing>/telemetry|events|metrics|presence``; ``iot:RetainPublish`` on ``presence`` only
      (the agent's retained presence and its retained MQTT will);
    - publish its AWS IoT Commands updates (``$aws/commands/things/<thing>/executions/*/response/json``);
    - subscribe/receive: the reserved topics of its own thing, which only AWS publishes to: its shadow and
      job responses (``$aws/things/<thing>/…``) and its command requests and their answers
      (``$aws/commands/things/<thing>/…``), as one resource ``$aws/*things/<thing>/*`` (AWS caps a policy at
      2048 characters; the two prefixes and their commands sibling would not fit).

    Named shadows default to any name (``*``); ``shadow_names`` pins them. Region and account default to
    ``*``: a policy only ever applies inside the account and region where it is created, so naming them
    adds nothing but characters, and AWS caps a policy at 2048 without whitespace (see ``policy_size``).
    """
    if partition not in PARTITIONS:
        raise ValueError(f"unknown partition {partition!r}; use one of {', '.join(PARTITIONS)}")

    def arn(resource: str) -> str:
        return _arn(partition, region, account, resource)

    shadows = [topics.shadow_prefix(THING)] + [topics.shadow_prefix(THING, name) for name in shadow_names]
    publish = [arn(f"topic/{s}/{op}") for s in shadows for op in ("get", "update")]
    publish += [arn(f"topic/{topics.jobs_topic(THING, op)}") for op in JOBS_REQUESTS]
    publish += [arn(f"topic/{topics.agent_topic(THING, t)}") for t in topics.AGENT_TOPICS]
    publish += [arn(f"topic/$aws/commands/things/{THING}/executions/*/response/json")]
    # $aws/things/<thing>/... (shadow, jobs) and $aws/commands/things/<thing>/... (AWS IoT Commands)
    own = f"$aws/*things/{THING}/*"
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Action": "iot:Connect",
                "Resource": arn(f"client/{THING}"),
                "Condition": {"Bool": {"iot:Connection.Thing.IsAttached": "true"}},
            },
            {"Effect": "Allow", "Action": "iot:Publish", "Resource": publish},
            {
                "Effect": "Allow",
                "Action": "iot:RetainPublish",
                "Resource": [arn(f"topic/{topics.agent_topic(THING, t)}") for t in topics.RETAINED_TOPICS],
            },
            {
                "Effect": "Allow",
                "Action": "iot:Subscribe",
                "Resource": [arn(f"topicfilter/{own}")],
            },
            {
                "Effect": "Allow",
                "Action": "iot:Receive",
                "Resource": [arn(f"topic/{own}")],
            },
        ],
    }


def policy_size(policy: dict[str, Any]) -> int:
    """Size as AWS IoT counts it against its 2048-character limit: the JSON without whitespace."""
    return len(json.dumps(policy, separators=(",", ":")))


def jitp_template(policy_name: str = "roomba-agent", thing_type: str | None = None) -> dict[str, Any]:
    """The just-in-time provisioning template: thing named by the certificate CN, certificate activated,
    the named device policy attached. Only CN and certificate id are used, so every certificate we issue
    satisfies it (a declared parameter missing from the certificate would fail provisioning).

    ``OverrideSettings`` keep a rerun from undoing an operator's decisions: a certificate that already
    exists keeps its status (one deactivated or revoked is not switched back to ACTIVE), and an existing
    thing keeps its groups and, unless ``thing_type`` is given, its type.
    """
    thing_properties: dict[str, Any] = {"ThingName": {"Ref": "AWS::IoT::Certificate::CommonName"}}
    if thing_type:
        thing_properties["ThingTypeName"] = thing_type
    return {
        "Parameters": {
            "AWS::IoT::Certificate::CommonName": {"Type": "String"},
            "AWS::IoT::Certificate::Id": {"Type": "String"},
        },
        "Resources": {
            "thing": {
                "Type": "AWS::IoT::Thing",
                "OverrideSettings": {
                    "AttributePayload": "MERGE",
                    "ThingTypeName": "REPLACE" if thing_type else "DO_NOTHING",
                    "ThingGroups": "DO_NOTHING",
                },
                "Properties": thing_properties,
            },
            "certificate": {
                "Type": "AWS::IoT::Certificate",
                "Properties": {"CertificateId": {"Ref": "AWS::IoT::Certificate::Id"}, "Status": "ACTIVE"},
                "OverrideSettings": {"Status": "DO_NOTHING"},
            },
            "policy": {"Type": "AWS::IoT::Policy", "Properties": {"PolicyName": policy_name}},
        },
    }


def registration_config(template: dict[str, Any], role_arn: str) -> dict[str, str]:
    """``--registration-config`` for ``aws iot register-ca-certificate``: the template body as a string."""
    return {"templateBody": json.dumps(template, separators=(",", ":")), "roleArn": role_arn}
