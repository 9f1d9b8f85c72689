"""One command-line style for roomba-agent, roomba-fleet, roomba-provision and roomba-sim.

Every parser of the four tools, sub-commands and nested sub-commands included, is walked: each is a
``base.cli.Parser`` with ``--version`` and an epilog listing its exit codes, every option and sub-command
has help, no help or description carries raw reST markup, and every command that prints a result has
``--json`` (the few that always print JSON, print a script or run a service are listed with the reason).
Then the console scripts and their ``python -m`` forms run as processes, and the completion scripts are
sourced in a real bash.
"""

from __future__ import annotations

import argparse
import functools
import os
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from base import __version__
from base.cli import Parser, Tool

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
REST = re.compile(r"``|:(?:func|mod|class|meth|attr|data|exc|ref|doc):`")


def _agent_tool() -> Tool:
    from agent.cli import TOOL

    return TOOL


def _fleet_tool() -> Tool:
    from fleet.cli import TOOL

    return TOOL


def _provision_parser() -> argparse.ArgumentParser:
    from provisioning.cli import build_parser

    return build_parser()


def _sim_parser() -> argparse.ArgumentParser:
    from hal.sim.cli import build_parser

    return build_parser()


TOOLS: dict[str, Callable[[], Tool]] = {"roomba-agent": _agent_tool, "roomba-fleet": _fleet_tool}
SINGLE_PARSER_TOOLS: dict[str, Callable[[], argparse.ArgumentParser]] = {
    "roomba-provision": _provision_parser,
    "roomba-sim": _sim_parser,
}
MODULE_FORMS = {
    "roomba-agent": "agent",
    "roomba-fleet": "fleet",
    "roomba-provision": "provisioning",
    "roomba-sim": "hal.sim",
}
# commands that print a result without --json, and why
NO_JSON = {
    "roomba-agent run": "the daemon: it logs, it prints no result",
    "roomba-fleet shadow get": "always prints JSON",
    "roomba-fleet shadow update": "always prints JSON",
    "roomba-fleet shadow delete": "always prints JSON",
    "roomba-provision batch": "always prints one JSON summary",
    "roomba-provision aws policy": "always prints JSON",
    "roomba-provision aws jitp-template": "always prints JSON",
    "roomba-sim robot": "runs the simulator; prints one ready line",
    "roomba-sim ctl": "always prints the JSON answer",
}
SUB_NAMES = {
    "roomba-agent": ["run", "status", "doctor", "config", "update", "probe"],
    "roomba-fleet": [
        "up",
        "robot",
        "command",
        "shadow",
        "watch",
        "simulate",
        "jobs",
        "artifact",
        "release",
        "rollout",
    ],
}


def walk(parser: argparse.ArgumentParser, path: str) -> Iterator[tuple[str, argparse.ArgumentParser]]:
    """``(command path, parser)`` for ``parser`` and every nested sub-parser."""
    yield path, parser
    for action in parser._actions:  # argparse has no public walk
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                yield from walk(child, f"{path} {name}")


def is_leaf(parser: argparse.ArgumentParser) -> bool:
    return not any(isinstance(a, argparse._SubParsersAction) for a in parser._actions)


def style_problems(path: str, parser: argparse.ArgumentParser) -> list[str]:
    """What is wrong with one parser (not its children), each problem naming the command and option."""
    problems: list[str] = []
    if not isinstance(parser, Parser):
        problems.append(f"{path}: is {type(parser).__module__}.{type(parser).__name__}, not base.cli.Parser")
    if "--version" not in parser._option_string_actions:
        problems.append(f"{path}: no --version")
    if "exit codes:" not in (parser.epilog or ""):
        problems.append(f"{path}: the epilog does not list exit codes")
    for what, text in (("description", parser.description), ("epilog", parser.epilog)):
        markup = REST.search(text or "")
        if markup:
            problems.append(f"{path}: reST markup in the {what}: {markup[0]!r}")
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction | argparse._VersionAction):
            continue
        if isinstance(action, argparse._SubParsersAction):
            for choice in action._choices_actions:
                if not choice.help:
                    problems.append(f"{path} {choice.dest}: the sub-command has no help line")
                elif REST.search(choice.help):
                    problems.append(f"{path} {choice.dest}: reST markup in its help line")
            continue
        name = "/".join(action.option_strings) or action.metavar or action.dest
        if action.help == argparse.SUPPRESS:
            continue
        if not action.help or not str(action.help).strip():
            problems.append(f"{path}: {name} has no help")
        elif REST.search(str(action.help)):
            problems.append(f"{path}: {name}: reST markup in its help: {action.help!r}")
    try:
        text = parser.format_help()  # what --help prints; a stray % in a help string breaks it
    except (ValueError, TypeError, KeyError) as exc:
        problems.append(f"{path}: --help fails: {type(exc).__name__}: {exc}")
    else:
        if REST.search(text):
            problems.append(f"{path}: reST markup in --help")
    prints_a_result = is_leaf(parser) and path not in NO_JSON and not path.endswith(" completion")
    if prints_a_result and "--json" not in parser._option_string_actions:
        problems.append(f"{path}: prints a result but has no --json")
    return problems


def tree_problems(root: argparse.ArgumentParser, path: str) -> list[str]:
    return [p for sub_path, parser in walk(root, path) for p in style_problems(sub_path, parser)]


def test_the_tools_list_their_sub_commands() -> None:
    """The walk below covers every sub-command each Tool dispatches to (a new one joins the checks)."""
    for prog, tool in TOOLS.items():
        assert list(tool().subs) == SUB_NAMES[prog]


@pytest.mark.parametrize("prog", sorted(TOOLS))
def test_tool_top_level_parser(prog: str) -> None:
    """The top level only names its sub-commands (their options live in their modules): not walked deeper."""
    tool = TOOLS[prog]()
    assert style_problems(prog, tool.parser()) == []


@pytest.mark.parametrize(
    ("prog", "name"),
    [(prog, name) for prog, names in SUB_NAMES.items() for name in [*names, "completion"]],
    ids=[f"{prog} {name}" for prog, names in SUB_NAMES.items() for name in [*names, "completion"]],
)
def test_tool_sub_command_follows_the_style(prog: str, name: str, capsys: pytest.CaptureFixture[str]) -> None:
    tool = TOOLS[prog]()
    if name == "completion":
        parser = tool.completion_parser()
    else:
        module = tool.module(name)
        assert callable(getattr(module, "build_parser", None)), (
            f"{tool.subs[name].module} has no build_parser()"
        )
        assert callable(getattr(module, "main", None)), f"{tool.subs[name].module} has no main(argv)"
        parser = module.build_parser()
    assert parser.prog == f"{prog} {name}"
    problems = tree_problems(parser, f"{prog} {name}")
    assert problems == [], "\n".join(problems)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        tool.main([name, "--version"])
    assert (exc.value.code, capsys.readouterr().out) == (0, f"{prog} {__version__}\n")


@pytest.mark.parametrize("prog", sorted(SINGLE_PARSER_TOOLS))
def test_single_parser_tool_follows_the_style(prog: str, capsys: pytest.CaptureFixture[str]) -> None:
    root = SINGLE_PARSER_TOOLS[prog]()
    assert root.prog == prog
    problems = tree_problems(root, prog)
    assert problems == [], "\n".join(problems)
    for path, _parser in walk(root, prog):
        capsys.readouterr()
        with pytest.raises(SystemExit) as exc:
            root.parse_args([*path.split()[1:], "--version"])
        assert (exc.value.code, capsys.readouterr().out) == (0, f"{prog} {__version__}\n"), path


def all_commands() -> dict[str, argparse.ArgumentParser]:
    """Every command path of the four tools and its parser (importing every sub-command module)."""
    found: dict[str, argparse.ArgumentParser] = {}
    for prog, make_tool in TOOLS.items():
        for name, parser in make_tool().sub_parsers():
            found.update(walk(parser, f"{prog} {name}"))
    for prog, make_parser in SINGLE_PARSER_TOOLS.items():
        found.update(walk(make_parser(), prog))
    return found


def test_every_json_exemption_is_a_command_without_json() -> None:
    """An exemption from --json names a real command that still lacks it (a stale one would hide a gap)."""
    commands = all_commands()
    for path, why in NO_JSON.items():
        assert path in commands, f"{path} ({why}) is not a command any more"
        assert is_leaf(commands[path])
        assert "--json" not in commands[path]._option_string_actions, f"{path} has --json now: drop it"


def test_the_style_check_catches_what_it_claims_to() -> None:
    """A plain argparse parser, an option without help, reST backticks and a missing --json are all found."""
    plain = argparse.ArgumentParser(prog="roomba-x")
    plain.add_argument("--quiet", action="store_true")
    plain.add_argument("--mode", help="the ``mode`` to use")
    plain.add_argument("--ratio", help="up to 100%")
    problems = style_problems("roomba-x", plain)
    assert problems == [
        "roomba-x: is argparse.ArgumentParser, not base.cli.Parser",
        "roomba-x: no --version",
        "roomba-x: the epilog does not list exit codes",
        "roomba-x: --quiet has no help",
        "roomba-x: --mode: reST markup in its help: 'the ``mode`` to use'",
        "roomba-x: --help fails: ValueError: incomplete format",
        "roomba-x: prints a result but has no --json",
    ]
    good = Parser(prog="roomba-x", description="fine", exit_codes={1: "failed"})
    good.add_argument("--json", action="store_true", help="JSON")
    assert style_problems("roomba-x", good) == []


def _env() -> dict[str, str]:
    env = {**os.environ, "COLUMNS": "100"}
    env.pop("ROOMBA_FLEET_DIR", None)
    return env


@pytest.mark.parametrize("form", ["console-script", "python-m"])
@pytest.mark.parametrize("prog", sorted(MODULE_FORMS))
def test_version_and_help_as_processes(prog: str, form: str) -> None:
    """What an operator types: the installed script and ``python -m``, each with --version and --help."""
    command = [str(BIN / prog)] if form == "console-script" else [sys.executable, "-m", MODULE_FORMS[prog]]
    version = subprocess.run(
        [*command, "--version"], capture_output=True, text=True, timeout=60, cwd=REPO, env=_env()
    )
    assert (version.returncode, version.stdout, version.stderr) == (0, f"{prog} {__version__}\n", "")
    helped = subprocess.run(
        [*command, "--help"], capture_output=True, text=True, timeout=60, cwd=REPO, env=_env()
    )
    assert helped.returncode == 0 and helped.stderr == ""
    assert helped.stdout.startswith(f"usage: {prog} ")
    assert "exit codes:" in helped.stdout and "completion" in helped.stdout
    assert not REST.search(helped.stdout)


@functools.cache
def completion_script(prog: str) -> str:
    """``prog completion bash``, run once per tool as the installed script."""
    result = subprocess.run(
        [str(BIN / prog), "completion", "bash"], capture_output=True, text=True, timeout=60, env=_env()
    )
    assert result.returncode == 0 and result.stderr == "", result.stderr
    return result.stdout


def completions(prog: str, *words: str) -> list[str]:
    """What a real bash offers after ``prog words...`` with the tool's completion script sourced (the last
    word is the one being completed; pass "" for a fresh word)."""
    program = f"""
source /dev/stdin || exit 9
spec=$(complete -p {prog}) || exit 8
func=${{spec##*-F }}; func=${{func%% *}}
COMP_WORDS=("$@")
COMP_CWORD=$(( ${{#COMP_WORDS[@]}} - 1 ))
COMP_LINE="$*"; COMP_POINT=${{#COMP_LINE}}
"$func" {prog} "${{COMP_WORDS[COMP_CWORD]}}" "${{COMP_WORDS[COMP_CWORD-1]}}"
printf '%s\\n' "${{COMPREPLY[@]}}"
"""
    result = subprocess.run(
        ["bash", "-c", program, "bash", prog, *words],
        input=completion_script(prog),
        capture_output=True,
        text=True,
        timeout=60,
        env=_env(),
    )
    assert result.returncode == 0, result.stderr
    return [w for w in result.stdout.splitlines() if w]


def test_bash_completion_of_the_four_tools() -> None:
    """``source <(TOOL completion bash)`` in a real bash completes sub-commands, nested ones and options."""
    assert completions("roomba-fleet", "sh") == ["shadow"]
    assert completions("roomba-provision", "ca", "") == [
        "--help",
        "--version",
        "init",
        "server-cert",
        "verification-cert",
    ]
    assert completions("roomba-provision", "ca", "init", "--di") == ["--dir"]
    assert completions("roomba-provision", "ca", "init", "--key-type", "") == ["ec", "rsa"]
    assert completions("roomba-sim", "c") == ["completion", "ctl"]
    assert completions("roomba-agent", "st") == ["status"]
    assert "--json" in completions("roomba-fleet", "robot", "add", "r1", "--")
