"""Published releases in the local cloud's artifact store: what ``roomba-fleet release publish`` writes and
what a rollout reads.

A release ``V`` is two objects in bucket ``roomba-releases``: ``roomba-agent/V/roomba-agent-V.bundle`` and
``roomba-agent/V/release.json`` (``{"version", "sha256", "size", "s3_url", "file", "manifest"}``). On AWS
the same two objects go to S3, and a job document names the bundle with the same
``${aws:iot:s3-presigned-url:...}`` placeholder. The local cloud's own release-signing key (the default
signer of ``release build``) lives in ``DIR/release-signing``.
"""

from __future__ import annotations

import contextlib
import json
import tempfile
from pathlib import Path
from typing import Any

from packaging.version import InvalidVersion, Version

from base.logs import get_logger
from localcloud.artifacts import ArtifactStore
from localcloud.layout import CloudDir
from provisioning import release

BUCKET = "roomba-releases"
KEY_PREFIX = "roomba-agent"
RELEASE_JSON = "release.json"
SIGNER_DIR = "release-signing"
PLACEHOLDER = "${{aws:iot:s3-presigned-url:{url}}}"

log = get_logger("localcloud.releases")


class PublishError(ValueError):
    """The bundle cannot be published as it is (a clear message for the operator)."""


def placeholder(s3_url: str) -> str:
    """The job-document text AWS IoT Jobs replaces with a presigned URL to ``s3_url``."""
    return PLACEHOLDER.format(url=s3_url)


def store_for(cloud: CloudDir) -> ArtifactStore:
    """The store's files alone (no API port, no running cloud needed)."""
    return ArtifactStore(cloud.artifacts_dir)


def cloud_signer_dir(cloud: CloudDir) -> Path:
    """The local cloud's own release-signing directory (made on first use)."""
    return cloud.root / SIGNER_DIR


def release_key(version: str, file: str) -> str:
    return f"{KEY_PREFIX}/{version}/{file}"


def publish(
    cloud: CloudDir, bundle: Path, *, trust: Path | None = None, replace: bool = True
) -> dict[str, Any]:
    """Store ``bundle`` and its ``release.json`` in the artifact store; the release.json document. With
    ``replace`` False (``roomba-fleet release publish``), a version already published with another bundle
    is refused (PublishError): robots that installed it would keep the old build. Test harnesses that build
    the same versions again in one shared cloud leave it True."""
    with release.BundleReader(bundle) as reader:
        manifest = (
            reader.verify(trust) if trust is not None else release.parse_manifest(reader.manifest_bytes)
        )
    digest = release.sha256_file(bundle)
    before = None if replace else release_info(cloud, manifest.version)
    if before is not None and before.get("sha256") != digest:
        # robots may have installed the published one: a rebuild under its version would never reach them
        raise PublishError(
            f"version {manifest.version} is already published with other content (sha256 "
            f"{str(before.get('sha256'))[:16]}…, this bundle {digest[:16]}…): publish the fix under a new version"
        )
    store = store_for(cloud)
    url = store.put(bundle, release_key(manifest.version, bundle.name), bucket=BUCKET)
    doc = {
        "version": manifest.version,
        "sha256": digest,
        "size": bundle.stat().st_size,
        "s3_url": url,
        "file": bundle.name,
        "manifest": manifest.to_json(),
    }
    with tempfile.TemporaryDirectory(prefix="roomba-release-") as tmp:
        path = Path(tmp) / RELEASE_JSON
        path.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
        store.put(path, release_key(manifest.version, RELEASE_JSON), bucket=BUCKET)
    log.info("release.published", version=manifest.version, url=url)
    return doc


def job_document(info: dict[str, Any], *, allow_downgrade: bool = False) -> dict[str, Any]:
    """The update job's document for a published release (the URL as AWS's presigned-URL placeholder)."""
    return {
        "operation": "update",
        "release": {
            "version": info["version"],
            "url": placeholder(info["s3_url"]),
            "sha256": info["sha256"],
            "size": info["size"],
        },
        "allow_downgrade": allow_downgrade,
    }


def release_info(cloud: CloudDir, version: str) -> dict[str, Any] | None:
    """The ``release.json`` of a published version, or None."""
    path = store_for(cloud).path_of(BUCKET, release_key(version, RELEASE_JSON))
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    return doc if isinstance(doc, dict) else None


def published(cloud: CloudDir) -> list[dict[str, Any]]:
    """Every published release's ``release.json``, oldest version first."""
    root = store_for(cloud).root / BUCKET / KEY_PREFIX
    found: list[dict[str, Any]] = []
    if root.is_dir():
        for path in root.glob(f"*/{RELEASE_JSON}"):
            with contextlib.suppress(OSError, ValueError):
                doc = json.loads(path.read_text())
                if isinstance(doc, dict) and isinstance(doc.get("version"), str):
                    found.append(doc)

    def order(doc: dict[str, Any]) -> tuple[int, Version | str]:
        try:
            return (0, Version(doc["version"]))
        except InvalidVersion:
            return (1, doc["version"])

    return sorted(found, key=order)
