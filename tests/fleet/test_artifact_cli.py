"""``roomba-fleet artifact put|list``: a file goes into the store under its key, the S3-style URL and the
job-document placeholder are printed, keys the store refuses are usage errors; and the placeholder in a real
job's document reaches a robot as a presigned URL that downloads the very bytes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fleet.artifact import placeholder
from fleet.cli import main

URL = "https://s3.us-east-1.amazonaws.com/local-artifacts/"


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_put_prints_the_url_and_the_placeholder_and_list_shows_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cloud = tmp_path / "cloud"
    image = tmp_path / "agent-1.4.tar.gz"
    image.write_bytes(b"\x1f\x8b" + bytes(range(256)) * 4)
    code, out, err = run_cli(
        capsys, "artifact", "put", str(image), "--key", "releases/agent-1.4.tar.gz", "--dir", str(cloud)
    )
    assert (code, err) == (0, "")
    assert f"url:         {URL}releases/agent-1.4.tar.gz" in out
    assert "${aws:iot:s3-presigned-url:" + URL + "releases/agent-1.4.tar.gz}" in out
    assert (
        cloud / "artifacts" / "local-artifacts" / "releases" / "agent-1.4.tar.gz"
    ).read_bytes() == image.read_bytes()
    code, out, _err = run_cli(capsys, "artifact", "put", str(image), "--dir", str(cloud), "--json")
    doc = json.loads(out)
    assert doc == {
        "key": "agent-1.4.tar.gz",
        "size": 1026,
        "url": f"{URL}agent-1.4.tar.gz",
        "placeholder": placeholder(f"{URL}agent-1.4.tar.gz"),
    }
    code, out, _err = run_cli(capsys, "artifact", "list", "--dir", str(cloud), "--json")
    assert [(a["key"], a["size"]) for a in json.loads(out)["artifacts"]] == [
        ("agent-1.4.tar.gz", 1026),
        ("releases/agent-1.4.tar.gz", 1026),
    ]
    code, out, _err = run_cli(capsys, "artifact", "list", "--dir", str(cloud))
    assert code == 0 and out.splitlines()[1].split() == [
        "releases/agent-1.4.tar.gz",
        "1026",
        f"{URL}releases/agent-1.4.tar.gz",
    ]


def test_an_empty_store_says_how_to_fill_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _err = run_cli(capsys, "artifact", "list", "--dir", str(tmp_path))
    assert code == 0 and "roomba-fleet artifact put FILE" in out


@pytest.mark.parametrize("key", ["../escape", "a//b", "/abs"], ids=["dotdot", "empty-part", "absolute"])
def test_keys_the_store_refuses_are_usage_errors(
    key: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    f = tmp_path / "f.bin"
    f.write_bytes(b"x")
    code, out, err = run_cli(
        capsys, "artifact", "put", str(f), "--key", key, "--dir", str(tmp_path / "cloud")
    )
    assert code == 2 and out == "" and f"--key {key}:" in err
    assert not (tmp_path / "cloud" / "artifacts").exists() or not any(
        (tmp_path / "cloud" / "artifacts").rglob("f.bin")
    )


def test_a_missing_file_is_a_usage_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _out, err = run_cli(capsys, "artifact", "put", str(tmp_path / "absent"), "--dir", str(tmp_path))
    assert code == 2 and "no such file" in err
