"""``roomba-fleet artifact put FILE [--key K]`` and ``artifact list``: files a job document can name.

A job that downloads something (a firmware image, a script, a log upload target) names it in its document
as ``${aws:iot:s3-presigned-url:https://s3.us-east-1.amazonaws.com/local-artifacts/KEY}``, exactly as on AWS;
when a robot fetches the document the local cloud replaces the placeholder with a time-limited signed URL
to its own artifact store (:class:`localcloud.artifacts.ArtifactStore`, served on the API port). ``put``
copies FILE into the store and prints the S3-style URL and the placeholder, ready to paste into a
document; it needs only the cloud's directory, not a running cloud.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from base import logs
from base.cli import Parser, add_json
from localcloud.artifacts import ArtifactError, ArtifactStore
from localcloud.layout import DIR_HELP, CloudDir

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_CODES = {
    EXIT_FAILED: "the file could not be stored",
    EXIT_USAGE: "usage error (bad option, no such file, a key the store refuses)",
}
PLACEHOLDER = "${{aws:iot:s3-presigned-url:{url}}}"


def placeholder(s3_url: str) -> str:
    """The job-document text AWS IoT Jobs replaces with a presigned URL to ``s3_url``."""
    return PLACEHOLDER.format(url=s3_url)


def store_for(cloud: CloudDir) -> ArtifactStore:
    """The store's files alone: ``put`` and ``list`` need neither the API port nor a running cloud."""
    return ArtifactStore(cloud.artifacts_dir)


def build_parser() -> Parser:
    p = Parser(
        prog="roomba-fleet artifact",
        description="Files for jobs: put one into the local cloud's artifact store and get the S3-style URL "
        "and the ${aws:iot:s3-presigned-url:...} placeholder a job document names it with.",
        exit_codes=EXIT_CODES,
    )
    sub = p.add_subparsers(dest="op", required=True, metavar="OP", title="operations")
    put = sub.add_parser(
        "put",
        help="store FILE and print its S3-style URL and the presigned-URL placeholder",
        description="Copy FILE into the artifact store under KEY (default: the file's name) and print the "
        "S3-style URL and the placeholder for a job document. Putting the same KEY again replaces it.",
        epilog="example:\n  roomba-fleet artifact put build/agent-1.4.tar.gz --key releases/agent-1.4.tar.gz",
        exit_codes=EXIT_CODES,
    )
    put.add_argument("file", metavar="FILE", help="the file to store")
    put.add_argument("--key", metavar="K", help="its key in the store, e.g. releases/agent-1.4.tar.gz")
    put.add_argument("--dir", help=DIR_HELP)
    add_json(put, "the key, size, URL and placeholder")
    ls = sub.add_parser(
        "list",
        help="list the stored artifacts",
        description="List the artifacts in the store: key, size and S3-style URL.",
        exit_codes=EXIT_CODES,
    )
    ls.add_argument("--dir", help=DIR_HELP)
    add_json(ls, "the artifacts")
    return p


def _put(args: argparse.Namespace, cloud: CloudDir) -> int:
    prog = "roomba-fleet artifact put"
    path = Path(args.file)
    if not path.is_file():
        print(f"{prog}: {path}: no such file", file=sys.stderr)
        return EXIT_USAGE
    key = args.key or path.name
    try:
        url = str(store_for(cloud).put(path, key))
    except ArtifactError as exc:
        print(f"{prog}: --key {key}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as exc:
        print(f"{prog}: cannot store {path}: {exc}", file=sys.stderr)
        return EXIT_FAILED
    doc = {"key": key, "size": path.stat().st_size, "url": url, "placeholder": placeholder(url)}
    if args.json:
        print(json.dumps(doc, indent=2))
    else:
        print(f"stored {path} ({doc['size']} bytes) as {key}")
        print(f"  url:         {url}")
        print(f"  in a job:    {doc['placeholder']}")
    return EXIT_OK


def artifacts(cloud: CloudDir) -> list[dict[str, Any]]:
    """Every stored artifact: key, size and URL, by key."""
    items = [{"key": a.key, "size": a.size, "url": a.s3_url} for a in store_for(cloud).list()]
    return sorted(items, key=lambda i: str(i["url"]))


def _list(args: argparse.Namespace, cloud: CloudDir) -> int:
    items = artifacts(cloud)
    if args.json:
        print(json.dumps({"artifacts": items}, indent=2))
        return EXIT_OK
    if not items:
        print("no artifacts (store one with `roomba-fleet artifact put FILE`)")
        return EXIT_OK
    width = max(len(str(i["key"])) for i in items)
    for item in items:
        print(f"{item['key']:<{width}}  {item['size']:>10}  {item['url']}")
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    logs.configure("warning")
    cloud = CloudDir.at(args.dir)
    return _put(args, cloud) if args.op == "put" else _list(args, cloud)


if __name__ == "__main__":
    sys.exit(main())
