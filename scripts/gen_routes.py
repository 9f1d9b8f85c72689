"""Regenerate localcloud/awsapi/routes.json from the installed botocore's service models.

The local cloud's HTTP control plane routes and parses requests from this table, so at run time it needs no
botocore; tests/localcloud/test_awsapi_routes.py regenerates it and compares, so the table follows botocore.

    .venv/bin/python scripts/gen_routes.py          # rewrite the file
    .venv/bin/python scripts/gen_routes.py --check  # exit 1 if it differs
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
TABLE = ROOT / "localcloud" / "awsapi" / "routes.json"
SERVICES = ("iot", "iot-jobs-data")


def _member(shape: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"type": shape.type_name}
    if shape.type_name == "list":
        out["member"] = shape.member.type_name
    if shape.type_name == "timestamp" and shape.serialization.get("timestampFormat"):
        out["timestampFormat"] = shape.serialization["timestampFormat"]
    return out


def generate() -> dict[str, Any]:
    import botocore
    import botocore.session

    session = botocore.session.get_session()
    services: dict[str, Any] = {}
    for name in SERVICES:
        model = session.get_service_model(name)
        operations: dict[str, Any] = {}
        for op_name in sorted(model.operation_names):
            op = model.operation_model(op_name)
            entry: dict[str, Any] = {
                "method": op.http["method"],
                "requestUri": op.http["requestUri"],
                "responseCode": int(op.http.get("responseCode", 200)),
            }
            inputs: dict[str, Any] = {}
            required: list[str] = []
            if op.input_shape is not None:
                payload = op.input_shape.serialization.get("payload")
                if payload:
                    entry["payload"] = payload
                required = list(op.input_shape.required_members)
                for member, shape in op.input_shape.members.items():
                    location = shape.serialization.get("location", "body")
                    spec = _member(shape)
                    spec["location"] = location
                    spec["name"] = shape.serialization.get("name", member)
                    inputs[member] = spec
            entry["input"] = inputs
            entry["required"] = sorted(required)
            status_member = None
            if op.output_shape is not None:
                for member, shape in op.output_shape.members.items():
                    if shape.serialization.get("location") == "statusCode":
                        status_member = member
            if status_member:
                entry["statusCodeMember"] = status_member
            operations[op_name] = entry
        services[name] = {
            "signingName": model.metadata["signingName"],
            "serviceId": model.metadata["serviceId"],
            "apiVersion": model.metadata["apiVersion"],
            "operations": operations,
        }
    return {"botocore": botocore.__version__, "services": services}


def render(table: dict[str, Any]) -> str:
    return json.dumps(table, indent=1, sort_keys=True) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the checked-in table differs")
    args = parser.parse_args(argv)
    text = render(generate())
    if args.check:
        same = TABLE.exists() and json.loads(TABLE.read_text())["services"] == json.loads(text)["services"]
        print("routes.json is up to date" if same else "routes.json differs: run scripts/gen_routes.py")
        return 0 if same else 1
    TABLE.write_text(text)
    print(f"wrote {TABLE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
