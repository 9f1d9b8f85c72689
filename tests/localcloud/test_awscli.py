"""The AWS CLI (awscli from PyPI), unchanged, through the ``local`` profile that ``up`` writes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from localcloud.testing import LocalCloud

pytestmark = pytest.mark.slow


def _aws_binary() -> str:
    beside = Path(sys.executable).with_name("aws")
    found = str(beside) if beside.exists() else shutil.which("aws")
    assert found, "the AWS CLI (awscli, a dev dependency) is not installed in this environment"
    return found


def aws(cloud: LocalCloud, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    return subprocess.run(
        [_aws_binary(), *args],
        env={**env, **cloud.aws_env()},
        capture_output=True,
        text=True,
        timeout=60,
    )


def aws_json(cloud: LocalCloud, *args: str) -> Any:
    done = aws(cloud, *args)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout) if done.stdout.strip() else None


def test_list_and_describe_jobs_through_the_profile(local_cloud: LocalCloud) -> None:
    iot = local_cloud.boto3_client("iot")
    local_cloud.add_robot("cli-robot-1")
    thing_arn = iot.create_thing(thingName="cli-robot-1")["thingArn"]
    iot.create_job(
        jobId="cli-job-1", targets=[thing_arn], document='{"operation": "doctor"}', description="via cli"
    )

    listed = aws_json(local_cloud, "iot", "list-jobs")
    assert "cli-job-1" in [j["jobId"] for j in listed["jobs"]]

    described = aws_json(local_cloud, "iot", "describe-job", "--job-id", "cli-job-1")["job"]
    assert described["jobId"] == "cli-job-1"
    assert described["description"] == "via cli"
    assert described["targets"] == [thing_arn]
    assert described["jobProcessDetails"]["numberOfQueuedThings"] == 1

    executions = aws_json(local_cloud, "iot", "list-job-executions-for-job", "--job-id", "cli-job-1")
    assert [e["thingArn"] for e in executions["executionSummaries"]] == [thing_arn]

    missing = aws(local_cloud, "iot", "describe-job", "--job-id", "no-such-job")
    assert missing.returncode != 0
    assert "ResourceNotFoundException" in missing.stderr


def test_the_cli_with_wrong_keys_gets_403(local_cloud: LocalCloud) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    done = subprocess.run(
        [_aws_binary(), "iot", "list-jobs"],
        env={
            **env,
            **local_cloud.aws_env(),
            "AWS_ACCESS_KEY_ID": "AKIANOTOURS",
            "AWS_SECRET_ACCESS_KEY": "x",
        },
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0
    assert "UnrecognizedClientException" in done.stderr


def test_the_ready_banner_prints_the_cli_line(local_cloud: LocalCloud) -> None:
    d = local_cloud.dir
    line = (
        f"AWS_CONFIG_FILE={d.aws_config} AWS_SHARED_CREDENTIALS_FILE={d.aws_credentials} AWS_PROFILE=local "
        "aws iot list-jobs"
    )
    assert any(out.strip() == line for out in local_cloud.output), local_cloud.output
