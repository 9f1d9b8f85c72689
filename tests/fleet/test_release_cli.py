"""``roomba-fleet release build|publish|list`` with real builds: pip builds the agent's wheel from a copy of the
tree with the release's version, the wheelhouse holds every runtime dependency (pip resolves the agent
offline from it), the bundle verifies against the signer's certificate; publish stores it and its
release.json where a job names it and prints the job document; a bad bundle is never published."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from fleet import release as fleet_release
from fleet.artifact import placeholder
from fleet.cli import main
from localcloud.layout import CloudDir
from provisioning import release

REPO = Path(__file__).resolve().parents[2]
URL = "https://s3.us-east-1.amazonaws.com/roomba-releases/roomba-agent/"


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def agent_version_in(bundle: Path, tmp_path: Path) -> tuple[str, str]:
    """The version the agent's wheel reports (base/__init__.py) and its marker line, from the bundle."""
    with release.BundleReader(bundle) as reader:
        manifest = release.parse_manifest(reader.manifest_bytes)
        member = next(m for m in reader.members if m.name == manifest.agent_wheel)
        with open(bundle, "rb") as f:
            f.seek(member.offset)
            (tmp_path / "agent.whl").write_bytes(f.read(member.size))
    with zipfile.ZipFile(tmp_path / "agent.whl") as wheel:
        text = wheel.read("base/__init__.py").decode()
    return re.search(r'__version__ = "([^"]+)"', text).group(1), text.splitlines()[-1]  # type: ignore[union-attr]


def test_build_from_a_patched_source_copy(
    release_kit, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = release_kit.source_copy(tmp_path)
    own = fleet_release.tree_version(source)
    with open(source / "base" / "__init__.py", "a") as f:
        f.write("BUILD_MARK = 'patched'\n")
    code, out, err = run_cli(
        capsys, "release", "build", "--version", "0.4.0", "--min-previous", own, "--source", str(source),
        "--signer", str(release_kit.signer_dir), "--out", str(tmp_path / "out"), "--no-deps", "--json",
    )  # fmt: skip
    assert (code, err) == (0, ""), err
    doc = json.loads(out)
    bundle = Path(doc["bundle"])
    assert bundle == tmp_path / "out" / "roomba-agent-0.4.0.bundle"
    assert doc["sha256"] == release.sha256_file(bundle) and doc["size"] == bundle.stat().st_size
    manifest = release.verify_bundle(bundle, release_kit.trust_pem)
    assert (manifest.version, manifest.min_previous, doc["wheels"]) == ("0.4.0", own, 1)
    assert list(manifest.files) == ["wheels/roomba_agent-0.4.0-py3-none-any.whl"]
    assert agent_version_in(bundle, tmp_path) == ("0.4.0", "BUILD_MARK = 'patched'")
    assert fleet_release.tree_version(source) == own  # the caller's tree is never changed


def test_a_full_bundle_installs_offline_from_its_wheelhouse(release_kit, tmp_path: Path) -> None:
    built = release_kit.built("0.2.0")
    assert release_kit.build("0.2.0") == built.bundle  # memoised: one build per session
    manifest = release.verify_bundle(built.bundle, release_kit.trust_pem)
    assert manifest.python_abi == release.current_abi() and manifest.requires == "roomba-agent==0.2.0"
    assert manifest.install_bytes == 3 * manifest.wheels_bytes
    names = {canonicalize_name(Path(n).name.split("-")[0]) for n in manifest.files}
    for dep in fleet_release.runtime_dependencies(REPO):
        assert canonicalize_name(Requirement(dep).name) in names, dep
    with release.BundleReader(built.bundle) as reader:
        reader.verify(release_kit.trust_pem)
        reader.extract(tmp_path / "x")
    resolved = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--no-index", "-q",
         "--report", str(tmp_path / "report.json"), "--find-links", str(tmp_path / "x" / "wheels"),
         "roomba-agent==0.2.0"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert resolved.returncode == 0, resolved.stderr
    report = json.loads((tmp_path / "report.json").read_text())
    installed = {i["metadata"]["name"]: i["metadata"]["version"] for i in report["install"]}
    assert installed["roomba-agent"] == "0.2.0"
    wheelhouse = (tmp_path / "x" / "wheels").as_uri()
    assert all(i["download_info"]["url"].startswith(wheelhouse) for i in report["install"])  # nothing else


def test_default_signer_publish_and_list(
    release_kit, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cloud = tmp_path / "cloud"
    code, out, err = run_cli(
        capsys, "release", "build", "--version", "0.2.1", "--dir", str(cloud), "--out", str(tmp_path / "out"),
        "--no-deps",
    )  # fmt: skip
    assert code == 0, err
    signer = cloud / "release-signing"
    assert f"made a release-signing key in {signer}" in err
    bundle = tmp_path / "out" / "roomba-agent-0.2.1.bundle"
    assert out.splitlines()[0] == str(bundle)
    assert f"sha256:  {release.sha256_file(bundle)}" in out
    trust = signer / release.SIGNING_CERT
    code, out, err = run_cli(
        capsys, "release", "publish", str(bundle), "--dir", str(cloud), "--trust", str(trust), "--json"
    )
    assert (code, err) == (0, ""), err
    doc = json.loads(out)
    info = doc["release"]
    stored = cloud / "artifacts" / "roomba-releases" / "roomba-agent" / "0.2.1"
    assert (stored / bundle.name).read_bytes() == bundle.read_bytes()
    assert json.loads((stored / "release.json").read_text()) == info
    assert info == {
        "version": "0.2.1",
        "sha256": release.sha256_file(bundle),
        "size": bundle.stat().st_size,
        "s3_url": f"{URL}0.2.1/{bundle.name}",
        "file": bundle.name,
        "manifest": release.verify_bundle(bundle, trust).to_json(),
    }
    assert doc["job_document"] == {
        "operation": "update",
        "release": {
            "version": "0.2.1",
            "url": placeholder(f"{URL}0.2.1/{bundle.name}"),
            "sha256": info["sha256"],
            "size": info["size"],
        },
        "allow_downgrade": False,
    }
    assert fleet_release.release_info(CloudDir.at(cloud), "0.2.1") == info
    assert fleet_release.release_info(CloudDir.at(cloud), "9.9.9") is None
    code, out, err = run_cli(
        capsys, "release", "publish", str(bundle), "--dir", str(tmp_path / "cloud2"), "--trust",
        str(release_kit.trust_pem),
    )  # fmt: skip
    assert (code, out) == (1, "") and ": signature: the signature does not verify" in err
    assert not (tmp_path / "cloud2" / "artifacts").exists()
    code, out, _ = run_cli(capsys, "release", "publish", str(bundle), "--dir", str(cloud))
    assert code == 0 and f"url:     {URL}0.2.1/{bundle.name}" in out and '"operation": "update"' in out
    # another build under the published version is refused: robots may have the first one installed
    code, out, err = run_cli(
        capsys, "release", "build", "--version", "0.2.1", "--dir", str(cloud), "--out", str(tmp_path / "out2"),
        "--no-deps", "--min-previous", "0.0.1",
    )  # fmt: skip
    assert code == 0, err
    rebuilt = tmp_path / "out2" / bundle.name
    assert release.sha256_file(rebuilt) != info["sha256"]
    code, out, err = run_cli(capsys, "release", "publish", str(rebuilt), "--dir", str(cloud))
    assert (code, out) == (1, "")
    assert "version 0.2.1 is already published with other content" in err
    assert err.rstrip().endswith("publish the fix under a new version")
    assert (stored / bundle.name).read_bytes() == bundle.read_bytes()
    code, out, _ = run_cli(capsys, "release", "list", "--dir", str(cloud), "--json")
    assert [r["version"] for r in json.loads(out)["releases"]] == ["0.2.1"]
    code, out, _ = run_cli(capsys, "release", "list", "--dir", str(cloud))
    assert out.split()[:2] == ["0.2.1", str(info["size"])]


def test_a_bad_bundle_is_not_published(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "roomba-agent-0.9.0.bundle"
    bad.write_bytes(b"\0" * 1024)
    cloud = tmp_path / "cloud"
    code, out, err = run_cli(capsys, "release", "publish", str(bad), "--dir", str(cloud))
    assert code == 1 and out == ""
    assert err.startswith(f"roomba-fleet release publish: {bad} is not a valid bundle: format: ")
    assert not (cloud / "artifacts").exists()
    code, out, _ = run_cli(capsys, "release", "list", "--dir", str(cloud))
    assert code == 0 and out.startswith("no releases")
    code, _, err = run_cli(capsys, "release", "publish", str(tmp_path / "none"), "--dir", str(cloud))
    assert code == 2 and "no such file" in err


@pytest.mark.parametrize(
    ("argv", "code", "message"),
    [
        (["--version", "not-a-version"], 1, "--version 'not-a-version' is not a PEP 440 version"),
        (["--source", "/nonexistent-src"], 2, "--source /nonexistent-src: no such directory"),
        (["--signer", "/nonexistent-signer"], 1, "is not a release-signing directory"),
    ],
    ids=["version", "source", "signer"],
)
def test_build_refusals_say_why(
    argv: list[str], code: int, message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    result = run_cli(
        capsys, "release", "build", "--dir", str(tmp_path / "cloud"), "--out", str(tmp_path), *argv
    )
    assert result[0] == code and message in result[2], result[2]
    assert not list(tmp_path.glob("*.bundle"))


def test_a_source_without_a_version_line_is_refused(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text("[project]\nname = 'x'\n")
    with pytest.raises(fleet_release.BuildError, match="not a roomba-agent source tree"):
        fleet_release.tree_version(tmp_path)


def test_make_release_passes_version_and_signer() -> None:
    dry = subprocess.run(
        ["make", "-n", "-C", str(REPO), "release", "VERSION=0.2.0", "SIGNER=/keys/release"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert dry.returncode == 0, dry.stderr
    assert "roomba-fleet release build --version '0.2.0'" in dry.stdout
    assert "--signer '/keys/release'" in dry.stdout


def test_publish_refuses_another_bundle_under_a_published_version(release_kit, tmp_path: Path) -> None:
    from localcloud.releases import PublishError, publish

    cloud = CloudDir.at(tmp_path / "cloud")
    first = release_kit.build("0.2.2", deps=False)
    info = publish(cloud, first, replace=False)
    assert publish(cloud, first, replace=False) == info  # the same bundle again: fine
    other = tmp_path / "other"
    other.mkdir()
    second = release_kit.build("0.2.2", deps=False, min_previous="0.0.1")
    (other / second.name).write_bytes(second.read_bytes())
    with pytest.raises(PublishError, match=r"0\.2\.2 is already published with other content"):
        publish(cloud, other / second.name, replace=False)
    assert fleet_release.release_info(cloud, "0.2.2") == info
