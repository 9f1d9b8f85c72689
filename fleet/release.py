"""``roomba-fleet release build|publish|list``: signed release bundles for over-the-air updates.

``build`` turns a source tree into ``roomba-agent-<version>.bundle``: the agent's wheel (built from a copy of
the tree with ``base.__version__`` set to the release's version), the wheelhouse of every runtime dependency
for this Python (so the robot installs offline; cached by dependency list, pins and ABI, so only the first
build downloads), a manifest and its signature (:mod:`provisioning.release`). ``publish`` puts a bundle in
the local cloud's artifact store (bucket ``roomba-releases``, key ``roomba-agent/<version>/<file>``) with
``release.json`` beside it and prints the job document that installs it; on AWS the same two files go to
S3. Neither needs a running cloud. The work is in :mod:`provisioning.release_build` and
:mod:`localcloud.releases`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from base import logs
from base.cli import Parser, add_json
from localcloud.artifacts import ArtifactError
from localcloud.layout import DIR_HELP, CloudDir
from localcloud.releases import (
    BUCKET,
    KEY_PREFIX,
    RELEASE_JSON,
    PublishError,
    cloud_signer_dir,
    job_document,
    publish,
    published,
    release_info,
    release_key,
)
from provisioning import release
from provisioning.errors import ProvisioningError
from provisioning.release_build import (
    BuildError,
    Built,
    ReleaseKit,
    build_release,
    check_version,
    copy_source,
    default_cache,
    default_source,
    runtime_dependencies,
    tree_version,
)

# the library lives below fleet (provisioning.release_build, localcloud.releases) so that fleetsim, rollout
# and benches use it too; these names stay importable from here for callers of the command's module
__all__ = [
    "BUCKET",
    "KEY_PREFIX",
    "RELEASE_JSON",
    "BuildError",
    "Built",
    "ReleaseKit",
    "build_release",
    "cloud_signer_dir",
    "copy_source",
    "default_source",
    "job_document",
    "main",
    "publish",
    "published",
    "release_info",
    "release_key",
    "runtime_dependencies",
    "tree_version",
]

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_CODES = {
    EXIT_FAILED: "the build, signature or store failed (the error line says why)",
    EXIT_USAGE: "usage error (bad option, no such file, not a source tree)",
}
DEFAULT_OUT = Path("dist/releases")


# --- the command line ------------------------------------------------------------------------------------


def build_parser() -> Parser:
    p = Parser(
        prog="roomba-fleet release",
        description="Signed release bundles for over-the-air updates: build one from the source tree, publish "
        "it into the local cloud's artifact store (S3 on AWS), list what is published.",
        exit_codes=EXIT_CODES,
    )
    sub = p.add_subparsers(dest="op", required=True, metavar="OP", title="operations")
    build = sub.add_parser(
        "build",
        help="build and sign roomba-agent-VERSION.bundle (the agent's wheel + its wheelhouse)",
        description="Build the agent's wheel from a copy of the source tree with its version set to VERSION, "
        "add the wheel of every runtime dependency for this Python (cached), write the manifest, sign it "
        "and write roomba-agent-VERSION.bundle. Prints the bundle's path and SHA-256.",
        epilog="example:\n  roomba-fleet release build --version 0.2.0 --signer keys/release",
        exit_codes=EXIT_CODES,
        version=False,  # --version V is the release's version here
    )
    build.add_argument("--version", metavar="V", help="the release's version (default: the tree's own)")
    build.add_argument(
        "--min-previous",
        metavar="V",
        help="oldest version a robot may update from (default: the tree's own version)",
    )
    build.add_argument("--source", metavar="DIR", help="the source tree (default: this checkout)")
    build.add_argument(
        "--signer",
        metavar="DIR",
        help="release-signing directory from `roomba-provision release keygen` (default: the local cloud's "
        "own, made on first use)",
    )
    build.add_argument("--pin-file", metavar="FILE", help="PIN of a token signer (else $ROOMBA_PKCS11_PIN)")
    build.add_argument("--out", metavar="DIR", help=f"where the bundle goes (default {DEFAULT_OUT})")
    build.add_argument(
        "--no-deps", action="store_true", help="only the agent's wheel (for simulated fleets: small, fast)"
    )
    build.add_argument(
        "--wheelhouse-cache", metavar="DIR", help=f"dependency wheel cache (default {default_cache()})"
    )
    build.add_argument("--dir", help=DIR_HELP)
    add_json(build, "the bundle, version, sha256, size")
    pub = sub.add_parser(
        "publish",
        help="store a bundle in the artifact store and print the update job's document",
        description=f"Check BUNDLE, store it in bucket {BUCKET} under {KEY_PREFIX}/VERSION/FILE with "
        f"{RELEASE_JSON} beside it, and print its S3-style URL and the update job document.",
        exit_codes=EXIT_CODES,
    )
    pub.add_argument("bundle", metavar="BUNDLE", help="a bundle from `release build`")
    pub.add_argument("--trust", metavar="PEM", help="also verify the signature against these certificates")
    pub.add_argument("--dir", help=DIR_HELP)
    add_json(pub, "the release.json document and the job document")
    ls = sub.add_parser(
        "list",
        help="list the published releases",
        description="List the published releases: version, size, SHA-256, S3-style URL.",
        exit_codes=EXIT_CODES,
    )
    ls.add_argument("--dir", help=DIR_HELP)
    add_json(ls, "the releases")
    return p


def _err(op: str, message: str) -> None:
    print(f"roomba-fleet release {op}: {message}", file=sys.stderr)


def _signer(args: argparse.Namespace, cloud: CloudDir) -> release.Signer:
    if args.signer:
        return release.load_signer(args.signer, pin_file=args.pin_file)
    directory = cloud_signer_dir(cloud)
    if not (directory / release.SIGNING_CERT).exists():
        release.keygen(directory, name="roomba local-cloud release signing")
        print(
            f"made a release-signing key in {directory}; robots trust {directory / release.SIGNING_CERT}",
            file=sys.stderr,
        )
    return release.load_signer(directory)


def _build(args: argparse.Namespace, cloud: CloudDir) -> int:
    if args.source and not Path(args.source).is_dir():
        _err("build", f"--source {args.source}: no such directory")
        return EXIT_USAGE
    try:
        for option, value in (("--version", args.version), ("--min-previous", args.min_previous)):
            if value is not None:
                check_version(value, option)
        with _signer(args, cloud) as signer:
            built = build_release(
                signer=signer,
                out_dir=Path(args.out) if args.out else DEFAULT_OUT,
                version=args.version,
                min_previous=args.min_previous,
                source=Path(args.source) if args.source else None,
                deps=not args.no_deps,
                cache=Path(args.wheelhouse_cache) if args.wheelhouse_cache else None,
            )
    except (BuildError, ProvisioningError) as exc:
        _err("build", str(exc))
        return EXIT_FAILED
    except release.ReleaseError as exc:
        _err("build", f"{exc.kind}: {exc}")
        return EXIT_FAILED
    if args.json:
        print(json.dumps(built.to_json(), indent=2))
    else:
        print(f"{built.bundle}")
        print(f"  sha256:  {built.sha256}")
        print(
            f"  version: {built.version} (from {built.min_previous} on), {built.wheels} wheels, {built.size} bytes"
        )
    return EXIT_OK


def _publish(args: argparse.Namespace, cloud: CloudDir) -> int:
    bundle = Path(args.bundle)
    if not bundle.is_file():
        _err("publish", f"{bundle}: no such file")
        return EXIT_USAGE
    try:
        info = publish(cloud, bundle, trust=Path(args.trust) if args.trust else None, replace=False)
    except release.ReleaseError as exc:
        _err("publish", f"{bundle} is not a valid bundle: {exc.kind}: {exc}")
        return EXIT_FAILED
    except PublishError as exc:
        _err("publish", f"{bundle}: {exc}")
        return EXIT_FAILED
    except (ArtifactError, OSError) as exc:
        _err("publish", f"cannot store {bundle}: {exc}")
        return EXIT_FAILED
    job = job_document(info)
    if args.json:
        print(json.dumps({"release": info, "job_document": job}, indent=2))
    else:
        print(f"published {info['file']} (version {info['version']}, {info['size']} bytes)")
        print(f"  url:     {info['s3_url']}")
        print(f"  sha256:  {info['sha256']}")
        print("  job document:")
        print(json.dumps(job, indent=2))
    return EXIT_OK


def _list(args: argparse.Namespace, cloud: CloudDir) -> int:
    items = published(cloud)
    if args.json:
        print(json.dumps({"releases": items}, indent=2))
        return EXIT_OK
    if not items:
        print("no releases (build one with `roomba-fleet release build`, then `release publish BUNDLE`)")
        return EXIT_OK
    width = max(len(str(i["version"])) for i in items)
    for item in items:
        print(
            f"{item['version']:<{width}}  {item.get('size', 0):>10}  {str(item.get('sha256', ''))[:16]}  {item.get('s3_url', '')}"
        )
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    logs.configure("warning")
    cloud = CloudDir.at(args.dir)
    return {"build": _build, "publish": _publish, "list": _list}[args.op](args, cloud)


if __name__ == "__main__":
    sys.exit(main())
