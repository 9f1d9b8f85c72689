"""``roomba-agent config init|check``: write a commented template, validate a file and show what ``run`` uses.

Both read the published schema (``agent/schemas/agent-config.schema.json``): the template lists every key
the schema knows with its default and description, so it cannot drift from what ``run`` accepts.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from agent import config as cfg
from base.cli import Parser, add_json

EXIT_INVALID = 1
EXIT_UNREADABLE = 3
INIT_MODE = 0o640  # as systemd/roomba-agent.tmpfiles.conf sets it: no secret inside, but no need for others

HEADER = """\
# roomba-agent configuration (TOML), written by `roomba-agent config init`.
# Check it: roomba-agent config check --config FILE   (the schema: agent/schemas/{schema})
# A line "# key = value" shows the default: uncomment it to change the value. Keys set to "" are
# required. $ROOMBA_AGENT_* variables and the command-line options named in [...] override single keys.
"""


# the template ----------------------------------------------------------------------------------------------
def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)  # a JSON string is a TOML basic string
    raise TypeError(f"no TOML spelling for {value!r}")


def _comment(sub: Mapping[str, Any]) -> str:
    notes = []
    if "minimum" in sub or "maximum" in sub:
        notes.append(f"{sub.get('minimum', '')}..{sub.get('maximum', '')}")
    if "enum" in sub:
        notes.append("one of " + ", ".join(str(v) for v in sub["enum"]))
    overrides = ([f"${sub['x-env']}"] if sub.get("x-env") else []) + cfg.options_of(sub)[:1]
    text = f"# {sub.get('description', '')}"
    if notes:
        text += f" ({'; '.join(notes)})"
    if overrides:
        text += f" [{', '.join(overrides)}]"
    return text


def template(values: Mapping[str, Any]) -> str:
    """The commented configuration: ``values`` (dotted path -> value) are written as set; other keys show
    their default (commented out) or ``""`` when required; optional tables of required keys (the PKCS#11
    key) are commented out whole."""
    lines = [HEADER.format(schema=cfg.SCHEMA_FILE)]

    def table(node: Mapping[str, Any], prefix: str, commented: bool) -> None:
        lead = "# " if commented else ""
        children = node.get("properties", {})
        for name, sub in children.items():
            if sub.get("type") == "object":
                continue
            path = prefix + name
            lines.append(_comment(sub))
            if path in values:
                lines.append(f"{lead}{name} = {toml_value(values[path])}")
            elif "default" in sub:
                lines.append(f"# {name} = {toml_value(sub['default'])}")
            else:
                lines.append(f'{lead}{name} = ""')
        for name, sub in children.items():
            if sub.get("type") != "object":
                continue
            path = prefix + name
            optional_block = name not in node.get("required", []) and bool(sub.get("required"))
            given = any(v.startswith(path + ".") for v in values)
            inner = commented or (optional_block and not given)
            lines.append("")
            lines.append(_comment(sub))
            lines.append(f"{'# ' if inner else ''}[{path}]")
            table(sub, path + ".", inner)

    table(cfg.schema(), "", False)
    return "\n".join(lines).rstrip("\n") + "\n"


def _absolute(value: str) -> str:
    return value if "://" in value else str(Path(value).expanduser().absolute())


def init_values(args: Any) -> dict[str, Any]:
    """Dotted path -> value from init's options; paths absolute (the agent may start in another directory)."""
    values: dict[str, Any] = {}
    if args.identity:
        from provisioning.device import DEVICE_CERT, DEVICE_KEY, ROOT_CA

        ident = Path(args.identity).expanduser().absolute()
        values |= {
            "connection.root_ca": str(ident / ROOT_CA),
            "connection.cert": str(ident / DEVICE_CERT),
            "connection.key": str(ident / DEVICE_KEY),
        }
    for name, dotted in cfg.OVERRIDES.items():
        raw = getattr(args, name, None)
        if raw is None:
            continue
        value = cfg.coerce(dotted, raw)
        if (cfg.schema_at(dotted) or {}).get("x-path") and isinstance(value, str):
            value = _absolute(value)
        values[dotted] = value
    return values


def write_new(path: Path, text: str, force: bool) -> None:
    """Write ``text`` at ``path`` (mode 0640) atomically; an existing file only with ``force``."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, INIT_MODE)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        os.chmod(tmp, INIT_MODE)  # whatever the umask
        if force:
            os.replace(tmp, path)
        else:
            os.link(tmp, path)  # fails if the file appeared meanwhile: never overwrite
    finally:
        tmp.unlink(missing_ok=True)


def run_init(args: Any) -> int:
    values = init_values(args)
    text = template(values)
    import tomllib

    missing = [line.split(":", 1)[0] for line in cfg.problems_of(tomllib.loads(text)) if ": missing" in line]
    out = Path(args.out) if args.out else None
    if out is not None:
        if out.exists() and not args.force:
            print(
                f"roomba-agent config init: {out} exists; refusing to overwrite it (--force replaces it)",
                file=sys.stderr,
            )
            return EXIT_INVALID
        try:
            write_new(out, text, args.force)
        except OSError as exc:
            print(f"roomba-agent config init: cannot write {out}: {exc.strerror or exc}", file=sys.stderr)
            return EXIT_UNREADABLE
    if args.json:
        doc: dict[str, Any] = {"path": str(out) if out else None, "missing": missing}
        if out is None:
            doc["text"] = text
        print(json.dumps(doc, indent=2))
    elif out is None:
        sys.stdout.write(text)
    else:
        print(f"wrote {out}")
    if out is not None and not args.json:
        if missing:
            print(
                f"fill in: {', '.join(missing)}; then: roomba-agent config check --config {out}",
                file=sys.stderr,
            )
        else:
            print(f"check it: roomba-agent config check --config {out}", file=sys.stderr)
    return 0


# check -----------------------------------------------------------------------------------------------------
def sources(file_doc: Mapping[str, Any], merged: cfg.Layered, effective: Mapping[str, Any]) -> dict[str, str]:
    """Where each effective value came from: ``file``, ``$ROOMBA_AGENT_...``, ``--option`` or ``default``."""
    out: dict[str, str] = {}

    def visit(node: Mapping[str, Any], prefix: str) -> None:
        for name, value in node.items():
            path = prefix + name
            if isinstance(value, dict) and path != "connection.pkcs11":
                visit(value, path + ".")
                continue
            found, _ = cfg.get_path(file_doc, path)
            out[path] = merged.sources.get(path) or ("file" if found else "default")

    visit(effective, "")
    return out


def flatten(doc: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, value in doc.items():
        path = prefix + name
        if isinstance(value, dict):
            out |= flatten(value, path + ".")
        else:
            out[path] = value
    return out


def run_check(args: Any) -> int:
    where, origin = cfg.resolve_path(args.config)
    prog = "roomba-agent config check"
    try:
        file_doc = cfg.load_toml(where)
    except cfg.ConfigError as exc:
        unreadable = not os.path.isfile(where) or not os.access(where, os.R_OK)
        problem = exc.problems[0] + (
            f" (the default path: pass --config FILE or set ${cfg.CONFIG_ENV})" if origin == "default" else ""
        )
        if args.json:
            print(
                json.dumps(
                    {"ok": False, "config_path": where, "problems": [problem], "config": None}, indent=2
                )
            )
        else:
            print(f"{prog}: {problem}", file=sys.stderr)
        return EXIT_UNREADABLE if unreadable else EXIT_INVALID
    merged = cfg.merge_layers(file_doc, os.environ, cfg.cli_overrides(args))
    config, problems = cfg.validate(merged)
    if config is None:
        if args.json:
            print(
                json.dumps(
                    {"ok": False, "config_path": where, "problems": problems, "config": None}, indent=2
                )
            )
        else:
            for problem in problems:
                print(f"{where}: {problem}", file=sys.stderr)
            print(f"{len(problems)} problem(s); fix them, then run this again", file=sys.stderr)
        return EXIT_INVALID
    effective = cfg.effective(config)
    origin_of = sources(file_doc, merged, effective)
    if args.json:
        print(
            json.dumps(
                {"ok": True, "config_path": where, "problems": [], "config": effective, "sources": origin_of},
                indent=2,
            )
        )
        return 0
    print(f"{where}: valid; the agent would run with:")
    flat = flatten(effective)
    width = max(len(f"{k} = {toml_value(v)}") for k, v in flat.items())
    for key, value in flat.items():
        src = origin_of.get(key) or origin_of.get(key.rsplit(".", 1)[0], "file")
        print(f"  {f'{key} = {toml_value(value)}':<{width}}  # {src}")
    return 0


# the command -----------------------------------------------------------------------------------------------
def build_parser() -> Parser:
    p = Parser(
        prog="roomba-agent config",
        description="Write a commented configuration template, or validate a configuration file.",
        exit_codes={
            EXIT_INVALID: "invalid configuration (one line per problem), or init refused to overwrite",
            EXIT_UNREADABLE: "the file is missing or unreadable (check), or cannot be written (init)",
        },
    )
    sub = p.add_subparsers(dest="action", required=True, metavar="ACTION", title="actions")
    init = sub.add_parser(
        "init",
        help="write a commented template with every key, its default and what it means",
        description="Write a commented template: every key the schema knows, its default and a one-line "
        'description. Options fill in values (paths are made absolute); keys left as "" are required.',
        epilog="example: roomba-agent config init --thing robot-001 --endpoint 127.0.0.1 --local \\\n"
        "    --identity identity --serial-port /dev/ttyUSB0 --out agent.toml",
        exit_codes={
            EXIT_INVALID: "the output file exists (use --force)",
            EXIT_UNREADABLE: "the output file cannot be written",
        },
    )
    init.add_argument(
        "--out", "-o", metavar="FILE", help="write the template here (mode 0640) instead of stdout"
    )
    init.add_argument("--force", action="store_true", help="replace FILE if it exists")
    init.add_argument(
        "--identity",
        metavar="DIR",
        help="an identity directory (roomba-provision device keygen --out DIR): sets root_ca, cert and key",
    )
    init.add_argument(
        "--local",
        action="store_const",
        const=True,
        default=None,
        help="set connection.local = true (a roomba-fleet up cloud)",
    )
    cfg.add_override_arguments(init, config=False, verb="set")
    add_json(init, "the path written, the required keys still missing (and the text when not written)")
    check = sub.add_parser(
        "check",
        help="validate a configuration file and print the configuration the agent would use",
        description="Validate the file with the environment and options layered on top, as run does, and "
        "print every effective value with where it came from (file, $ROOMBA_AGENT_..., option, default). "
        "The file holds paths only: keys and PINs stay in their own files and are never printed.",
        exit_codes={
            EXIT_INVALID: "invalid configuration (each problem on its own line)",
            EXIT_UNREADABLE: "the file is missing or unreadable",
        },
    )
    cfg.add_override_arguments(check)
    add_json(check, "ok, problems, the effective configuration and each value's source")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    if args.action == "init":
        return run_init(args)
    return run_check(args)
