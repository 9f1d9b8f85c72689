"""The one command-line style (base.cli): --version, the exit-code epilog, one-line errors that never echo
a PIN, lazy sub-command modules, the bash completion generated from the parsers, and a quiet SIGPIPE."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from base import __version__
from base.cli import Parser, Sub, Tool, add_completion, add_json, bash_completion

REPO = Path(__file__).resolve().parents[2]


def run_parser(parser: Parser, argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        parser.parse_args(argv)
    out, err = capsys.readouterr()
    return int(exc.value.code or 0), out, err


def test_every_parser_has_version_and_an_exit_code_epilog(capsys: pytest.CaptureFixture[str]) -> None:
    p = Parser(prog="roomba-x", description="d", epilog="more text", exit_codes={1: "it failed"})
    sub = p.add_subparsers(dest="cmd")
    child = sub.add_parser("child", help="a child", exit_codes={3: "a child's own code"})
    assert isinstance(child, Parser)
    assert run_parser(p, ["--version"], capsys) == (0, f"roomba-x {__version__}\n", "")
    code, out, _ = run_parser(p, ["child", "--version"], capsys)
    assert (code, out) == (0, f"roomba-x {__version__}\n")  # the tool's name, not "roomba-x child"
    code, out, _ = run_parser(p, ["--help"], capsys)
    assert code == 0
    assert out.rstrip().endswith(
        "more text\n\nexit codes:\n  0  success\n  1  it failed\n  2  usage error (bad option or argument)"
    )
    code, out, _ = run_parser(p, ["child", "--help"], capsys)
    assert (
        "exit codes:\n  0  success\n  2  usage error (bad option or argument)\n  3  a child's own code" in out
    )


def test_errors_are_one_line_naming_the_command_and_never_echo_a_pin(
    capsys: pytest.CaptureFixture[str],
) -> None:
    p = Parser(prog="roomba-x")
    sub = p.add_subparsers(dest="cmd")
    child = sub.add_parser("child", help="a child")
    child.add_argument("--n", type=int, help="a number")
    code, out, err = run_parser(p, ["child", "--n", "ten"], capsys)
    assert (code, out) == (2, "")
    assert err.splitlines() == [
        "roomba-x: error: argument --n: invalid int value: 'ten' (see roomba-x child --help)"
    ]
    secret = "Pin-do-not-echo-42"
    for argv in (["child", "--pin", secret], ["child", f"--user-pin={secret}"]):
        code, _out, err = run_parser(p, argv, capsys)
        assert code == 2 and secret not in err and len(err.splitlines()) == 1
        assert "is not accepted: a PIN never goes on the command line" in err
    code, _out, err = run_parser(p, ["child", f"--frob={secret}", secret], capsys)
    assert code == 2 and secret not in err
    assert err.splitlines() == ["roomba-x: error: unrecognized option(s): --frob (see roomba-x --help)"]
    code, _out, err = run_parser(p, ["child", secret], capsys)
    assert code == 2 and secret not in err and "1 unexpected argument(s)" in err


def test_add_json_and_long_descriptions_are_wrapped_but_examples_kept(
    capsys: pytest.CaptureFixture[str],
) -> None:
    p = Parser(
        prog="roomba-x",
        description="word " * 60,
        epilog="examples:\n  roomba-x --json   " + "x" * 120,
    )
    add_json(p, "the answer")
    assert p.parse_args(["--json"]).json is True
    code, out, _ = run_parser(p, ["--help"], capsys)
    assert code == 0
    assert "  --json      print the answer as JSON (for scripts)" in out
    description = out.split("\n\n")[1]
    assert len(description.splitlines()) > 1 and all(len(line) <= 100 for line in description.splitlines())
    assert "  roomba-x --json   " + "x" * 120 in out  # an indented example is never re-flowed


@pytest.fixture
def toy_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A package of two sub-command modules; ``heavy`` records that it was imported."""
    pkg = tmp_path / "toycli"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "light.py").write_text(
        textwrap.dedent(
            """
            from base.cli import Parser

            def build_parser():
                p = Parser(prog="toy light", description="the light one", exit_codes={4: "four"})
                p.add_argument("--level", choices=("low", "high"), help="how much")
                return p

            def main(argv):
                args = build_parser().parse_args(argv)
                print("light", args.level)
                return 4 if args.level == "high" else 0
            """
        )
    )
    (pkg / "heavy.py").write_text(
        textwrap.dedent(
            """
            import sys
            sys.modules["toycli.heavy_imported"] = sys.modules[__name__]
            from base.cli import Parser

            def build_parser():
                return Parser(prog="toy heavy", description="the heavy one")

            def main(argv):
                return 0
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "toycli"
    for name in [m for m in sys.modules if m.startswith("toycli")]:
        del sys.modules[name]


def toy_tool() -> Tool:
    return Tool(
        "toy",
        "A toy tool.",
        [
            Sub("light", "toycli.light", "the light sub-command"),
            Sub("heavy", "toycli.heavy", "the heavy sub-command"),
            Sub("gone", "toycli.gone", "not in this build"),
        ],
    )


def test_tool_imports_a_sub_command_only_when_it_runs(
    toy_package: str, capsys: pytest.CaptureFixture[str]
) -> None:
    tool = toy_tool()
    assert tool.main(["light", "--level", "high"]) == 4
    assert capsys.readouterr().out == "light high\n"
    assert "toycli.heavy_imported" not in sys.modules
    assert tool.main(["gone"]) == 2
    assert capsys.readouterr().err == "toy: gone is not available in this build\n"
    assert tool.main([]) == 2
    assert capsys.readouterr().err == "toy: error: a COMMAND is required (see toy --help)\n"
    with pytest.raises(SystemExit) as exc:
        tool.main(["nope"])
    assert exc.value.code == 2 and "invalid choice: 'nope'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        tool.main(["--version"])
    assert exc.value.code == 0 and capsys.readouterr().out == f"toy {__version__}\n"
    with pytest.raises(SystemExit) as exc:
        tool.main(["--help"])
    out = capsys.readouterr().out
    assert exc.value.code == 0 and "the heavy sub-command" in out and "completion" in out
    assert "toycli.heavy_imported" not in sys.modules


def complete(script: str, prog: str, *words: str) -> list[str]:
    """What bash offers after ``prog words...`` (the last word is the one being completed)."""
    line = " ".join([prog, *words])
    program = f"""
{script}
spec=$(complete -p {prog})
func=${{spec##*-F }}; func=${{func%% *}}
COMP_WORDS=({line}{" ''" if not words or words[-1] == "" else ""})
COMP_CWORD=$(( ${{#COMP_WORDS[@]}} - 1 ))
COMP_LINE="{line}"; COMP_POINT=${{#COMP_LINE}}
"$func" {prog} "${{COMP_WORDS[COMP_CWORD]}}" "${{COMP_WORDS[COMP_CWORD-1]}}"
printf '%s\\n' "${{COMPREPLY[@]}}"
"""
    result = subprocess.run(["bash", "-c", program], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    return [w for w in result.stdout.splitlines() if w]


def test_completion_walks_nested_parsers_and_positional_choices(
    toy_package: str, capsys: pytest.CaptureFixture[str]
) -> None:
    tool = toy_tool()
    assert tool.main(["completion", "bash"]) == 0
    script = capsys.readouterr().out
    assert complete(script, "toy", "") == ["--help", "--version", "completion", "gone", "heavy", "light"]
    assert complete(script, "toy", "li") == ["light"]
    assert complete(script, "toy", "light", "--l") == ["--level"]
    assert complete(script, "toy", "completion", "") == ["--help", "--version", "bash"]
    with pytest.raises(SystemExit) as exc:
        tool.main(["completion", "fish"])
    assert exc.value.code == 2

    p = Parser(prog="one")
    p.add_argument("--log", help="a value that is not a sub-command")
    sub = p.add_subparsers(dest="cmd")
    ca = sub.add_parser("ca", help="the CA").add_subparsers(dest="ca_cmd")
    init = ca.add_parser("init", help="make one")
    init.add_argument("--dir", help="where")
    init.add_argument("--key-type", choices=("ec", "rsa"), help="which key")
    ca.add_parser("rotate", help="rotate it")
    add_completion(sub, "one")
    script = bash_completion("one", {"": p})
    assert complete(script, "one", "ca", "") == ["--help", "--version", "init", "rotate"]
    assert complete(script, "one", "ca", "init", "--dir", "/tmp", "--") == [
        "--dir",
        "--help",
        "--key-type",
        "--version",
    ]
    assert complete(script, "one", "c") == ["ca", "completion"]
    assert complete(script, "one", "ca", "init", "--key-type", "") == ["ec", "rsa"]
    assert complete(script, "one", "ca", "init", "--key-type", "r") == ["rsa"]
    assert complete(script, "one", "ca", "init", "--dir", "") == []  # a file name: bash's default completion
    assert complete(script, "one", "--log", "ca", "") == ["--help", "--log", "--version", "ca", "completion"]
    assert complete(script, "one", "--log=x", "ca", "") == ["--help", "--version", "init", "rotate"]


ENTRY_CHILD = """
import sys
from base.cli import entry

def main():
    what = sys.argv[1]
    if what == "lines":
        for i in range(1_000_000):
            print("line", i)
    if what == "broken":
        raise BrokenPipeError(32, "Broken pipe")
    if what == "interrupt":
        raise KeyboardInterrupt
    return 5

entry(main)()
"""


def test_entry_is_quiet_on_a_closed_pipe_and_maps_ctrl_c_to_130() -> None:
    """``TOOL ... | head`` ends without a traceback (as cat does); Ctrl-C exits 130; main's code is kept."""
    proc = subprocess.Popen(
        [sys.executable, "-c", ENTRY_CHILD, "lines"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    assert proc.stdout is not None and proc.stderr is not None
    assert proc.stdout.readline() == "line 0\n"
    proc.stdout.close()
    err = proc.stderr.read()
    proc.wait(30)
    assert err == "" and proc.returncode != 0
    for what, code in (("interrupt", 130), ("plain", 5)):
        done = subprocess.run(
            [sys.executable, "-c", ENTRY_CHILD, what], capture_output=True, text=True, timeout=30, cwd=REPO
        )
        assert (done.returncode, done.stderr) == (code, ""), what
    # a broken pipe that is not standard output (a socket peer gone) is a real error: never swallowed
    done = subprocess.run(
        [sys.executable, "-c", ENTRY_CHILD, "broken"], capture_output=True, text=True, timeout=30, cwd=REPO
    )
    assert done.returncode == 1 and "BrokenPipeError" in done.stderr, done.stderr
