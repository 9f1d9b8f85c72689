"""One command-line style for ``roomba-agent``, ``roomba-sim``, ``roomba-provision`` and ``roomba-fleet``.

Every command and sub-command is an :class:`Parser` (argparse with ``--version``, an epilog listing its exit
codes, one-line errors that never echo a secret, and help for every option, checked by the tests). A
top-level tool whose sub-commands live in their own modules is a :class:`Tool`: it imports a sub-command's
module only when that sub-command runs (``roomba-agent probe`` must not pay for awscrt), each module
exposing ``build_parser() -> argparse.ArgumentParser`` and ``main(argv) -> int``. ``TOOL completion bash``
prints a bash completion script generated from the same parsers. :func:`entry` makes SIGPIPE quiet
(``roomba-fleet watch | head`` ends without a traceback, see :func:`entry`) and turns Ctrl-C into exit 130.
"""

from __future__ import annotations

import argparse
import importlib
import os
import re
import select
import shutil
import sys
import textwrap
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn

from base import __version__

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

COMMON_EXIT_CODES: dict[int, str] = {EXIT_OK: "success", EXIT_USAGE: "usage error (bad option or argument)"}
SECRET_FLAGS = ("--pin", "--user-pin", "--so-pin", "--password")


def exit_codes_epilog(codes: Mapping[int, str]) -> str:
    merged = {**COMMON_EXIT_CODES, **codes}
    width = max(len(str(c)) for c in merged)
    return "exit codes:\n" + "\n".join(f"  {c:<{width}}  {why}" for c, why in sorted(merged.items()))


def _fill(text: str) -> str:
    """Wrap each paragraph of ``text`` to the terminal (at most 100 columns); a paragraph with an indented
    line (an example, a table) is kept as written."""
    width = max(40, min(100, shutil.get_terminal_size().columns - 2))
    paragraphs = textwrap.dedent(text).strip().split("\n\n")
    return "\n\n".join(
        p
        if any(line[:1].isspace() for line in p.splitlines())
        else textwrap.fill(" ".join(p.split()), width, break_on_hyphens=False)
        for p in paragraphs
    )


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Option help wrapped without breaking paths and names at their hyphens (``/var/lib/roomba-agent``)."""

    def _split_lines(self, text: str, width: int) -> list[str]:
        return textwrap.wrap(" ".join(text.split()), width, break_on_hyphens=False, break_long_words=False)


class Parser(argparse.ArgumentParser):
    """argparse with the project's conventions.

    ``exit_codes`` (beyond 0 and 2, which every command has) go into the epilog; ``epilog`` text goes
    before them. ``--version`` prints ``TOOL VERSION``. Sub-parsers made with ``add_subparsers().add_parser``
    are Parsers too, and take the same keywords.
    """

    def __init__(
        self,
        *args: Any,
        exit_codes: Mapping[int, str] | None = None,
        version: bool = True,
        **kwargs: Any,
    ) -> None:
        epilog = kwargs.pop("epilog", None)
        codes = exit_codes_epilog(exit_codes or {})
        kwargs["epilog"] = f"{_fill(epilog)}\n\n{codes}" if epilog else codes
        if kwargs.get("description"):
            kwargs["description"] = _fill(kwargs["description"])
        kwargs.setdefault("formatter_class", _Formatter)
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)
        if version and self.add_help:
            tool = (self.prog or "roomba").split()[0]
            self.add_argument(
                "--version",
                action="version",
                version=f"{tool} {__version__}",
                help="print the version and exit",
            )

    def error(self, message: str) -> NoReturn:
        """One line, ``TOOL: error: MESSAGE (see COMMAND --help)``, never repeating what was typed after an
        unknown option (it may be a PIN)."""
        if message.startswith("unrecognized arguments:"):
            words = message.split(":", 1)[1].split()
            secret = next((w for w in words if w.split("=", 1)[0] in SECRET_FLAGS), None)
            if secret is not None:
                message = (
                    f"{secret.split('=', 1)[0]} is not accepted: a PIN never goes on the command line "
                    "(use $ROOMBA_PKCS11_PIN or --pin-file FILE)"
                )
            else:
                options = [w.split("=", 1)[0] for w in words if w.startswith("-")]
                message = (
                    f"unrecognized option(s): {' '.join(options)}"
                    if options
                    else f"{len(words)} unexpected argument(s)"
                )
        tool = (self.prog or "roomba").split()[0]
        self.exit(EXIT_USAGE, f"{tool}: error: {message} (see {self.prog} --help)\n")


def add_json(parser: argparse.ArgumentParser, what: str = "the result") -> None:
    parser.add_argument("--json", action="store_true", help=f"print {what} as JSON (for scripts)")


COMPLETION_HELP = "print a shell completion script: completion bash"


def _completion_options(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("shell", choices=("bash",), help="the shell (bash; zsh can load it with bashcompinit)")
    return p


def _completion_kwargs(prog: str) -> dict[str, str]:
    return {
        "description": f"Print a bash completion script for {prog}.",
        "epilog": f"install: {prog} completion bash > ~/.local/share/bash-completion/completions/{prog}",
    }


def add_completion(subparsers: Any, prog: str) -> argparse.ArgumentParser:
    """A ``completion`` sub-command (``PROG completion bash``) for a tool whose sub-commands share one parser;
    its ``main`` prints ``bash_completion(PROG, {"": parser})`` when ``args.command == "completion"``."""
    return _completion_options(
        subparsers.add_parser("completion", help=COMPLETION_HELP, **_completion_kwargs(prog))
    )


# sub-commands in their own modules -------------------------------------------------------------------------
@dataclass(frozen=True)
class Sub:
    """A sub-command whose parser and code live in ``module`` (``build_parser()`` and ``main(argv)``)."""

    name: str
    module: str
    help: str


class Tool:
    """A top-level command whose sub-commands are imported lazily."""

    def __init__(self, prog: str, description: str, subs: Sequence[Sub]) -> None:
        self.prog = prog
        self.description = description
        self.subs = {s.name: s for s in subs}

    def parser(self) -> Parser:
        """The top-level parser: sub-commands by name and help only (their options live in their modules)."""
        p = Parser(
            prog=self.prog,
            description=self.description,
            epilog=f"run `{self.prog} COMMAND --help` for a command's options; "
            f"`{self.prog} completion bash` prints shell completion",
            exit_codes={1: "the command failed (each command's --help lists its own codes)"},
        )
        sub = p.add_subparsers(dest="command", metavar="COMMAND", title="commands")
        for s in self.subs.values():
            sub.add_parser(s.name, help=s.help, add_help=False, version=False)
        sub.add_parser("completion", help=COMPLETION_HELP, add_help=False, version=False)
        return p

    def module(self, name: str) -> Any:
        return importlib.import_module(self.subs[name].module)

    def completion_parser(self) -> Parser:
        kwargs = _completion_kwargs(self.prog)
        p = Parser(prog=f"{self.prog} completion", description=kwargs["description"], epilog=kwargs["epilog"])
        _completion_options(p)
        return p

    def sub_parsers(self) -> Iterator[tuple[str, argparse.ArgumentParser]]:
        """Every sub-command's parser (importing its module), ``completion`` last."""
        for name in self.subs:
            yield name, self.module(name).build_parser()
        yield "completion", self.completion_parser()

    def main(self, argv: Sequence[str] | None = None) -> int:
        args = list(sys.argv[1:] if argv is None else argv)
        top = self.parser()
        if not args:
            print(f"{self.prog}: error: a COMMAND is required (see {self.prog} --help)", file=sys.stderr)
            return EXIT_USAGE
        name, rest = args[0], args[1:]
        if name in ("-h", "--help", "--version") or name not in {*self.subs, "completion"}:
            top.parse_args([name])  # prints help or version and exits 0, or errors with 2
            return EXIT_USAGE  # pragma: no cover - parse_args exits
        if name == "completion":
            return self._completion(rest)
        try:
            module = self.module(name)
        except ModuleNotFoundError as exc:
            if exc.name == self.subs[name].module:
                print(f"{self.prog}: {name} is not available in this build", file=sys.stderr)
                return EXIT_USAGE
            raise
        return int(module.main(rest) or 0)

    def _completion(self, rest: Sequence[str]) -> int:
        self.completion_parser().parse_args(list(rest))
        tree: dict[str, argparse.ArgumentParser] = {"": self.parser(), "completion": self.completion_parser()}
        for name in self.subs:
            try:
                tree[name] = self.module(name).build_parser()
            except (ImportError, AttributeError):  # not in this build, or no parser: its name still completes
                continue
        print(bash_completion(self.prog, tree))
        return EXIT_OK


# shell completion -------------------------------------------------------------------------------------------
_SAFE_WORD = re.compile(r"[A-Za-z0-9_.:/,=+@%-]+")


@dataclass
class _Completions:
    words: dict[str, set[str]]  # command path -> sub-commands, options, positional choices
    values: dict[tuple[str, str], set[str]]  # (path, option taking a value) -> its choices (empty: files)


def actions(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    """Every action (option, positional, sub-command group) of ``parser``.

    argparse has no public way to walk a parser; this module is the one place that reads its internals
    (``tests/test_boundaries.py`` allows exactly these two names here), so the rest of the project does not.
    """
    return list(parser._actions)


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """Sub-command name -> its parser (empty when ``parser`` has no sub-commands)."""
    out: dict[str, argparse.ArgumentParser] = {}
    for action in actions(parser):
        if isinstance(action, argparse._SubParsersAction):
            out.update(action.choices)
    return out


def _walk(parser: argparse.ArgumentParser, path: str, out: _Completions) -> None:
    words = out.words.setdefault(path, set())
    for action in actions(parser):
        options = [o for o in action.option_strings if o.startswith("--") or len(action.option_strings) == 1]
        words.update(options)
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                words.add(name)
                _walk(child, f"{path} {name}".strip(), out)
        elif action.option_strings and action.nargs != 0:
            choices = {str(c) for c in action.choices or ()}
            for option in action.option_strings:
                out.values[(path, option)] = {c for c in choices if _SAFE_WORD.fullmatch(c)}
        elif not action.option_strings and action.choices:
            words.update(str(c) for c in action.choices if _SAFE_WORD.fullmatch(str(c)))


def bash_completion(prog: str, tree: Mapping[str, argparse.ArgumentParser]) -> str:
    """A bash completion function for ``prog``: sub-command names, each level's options, and an option's
    choices after it (a value without choices falls back to file names).

    ``tree`` maps a sub-command path ("" for the top, "shadow", ...) to its parser; nested sub-parsers are
    walked. The words for a position are those of the longest path made of the words typed so far, not
    counting option values.
    """
    found = _Completions({}, {})
    for path, parser in tree.items():
        _walk(parser, path, found)
    func = "_" + "".join(c if c.isalnum() else "_" for c in prog)
    paths = "\n".join(f'            "{p}") path="{p}" ;;' for p in sorted(found.words) if p)
    words = "\n".join(
        f'        "{path}") words="{" ".join(sorted(w))}" ;;' for path, w in sorted(found.words.items())
    )
    values = "\n".join(
        f'        "{path}|{option}") echo "{" ".join(sorted(v))}" ;;'
        for (path, option), v in sorted(found.values.items())
    )
    return f"""# bash completion for {prog} (generated by `{prog} completion bash`)
# install: {prog} completion bash > ~/.local/share/bash-completion/completions/{prog}
{func}_values() {{  # the choices of option $2 at command path $1 ("": any value); fails for other words
    case "$1|$2" in
{values}
        *) return 1 ;;
    esac
}}
{func}() {{
    local cur prev path word words i
    cur="${{COMP_WORDS[COMP_CWORD]}}"
    prev="${{COMP_WORDS[COMP_CWORD-1]}}"
    path=""
    for ((i = 1; i < COMP_CWORD; i++)); do
        word="${{COMP_WORDS[i]}}"
        if [[ "$word" == -* ]]; then
            [[ "$word" != *=* ]] && {func}_values "$path" "$word" >/dev/null && ((i += 1))
            continue
        fi
        case "$path${{path:+ }}$word" in
{paths}
        esac
    done
    if ((COMP_CWORD > 1)) && [[ "$prev" == -* ]] && words=$({func}_values "$path" "$prev"); then
        COMPREPLY=($(compgen -W "$words" -- "$cur"))
        return 0
    fi
    case "$path" in
{words}
        *) words="" ;;
    esac
    COMPREPLY=($(compgen -W "$words" -- "$cur"))
}}
complete -o default -F {func} {prog}
"""


# process entry ----------------------------------------------------------------------------------------------
def stdout_closed() -> bool:
    """Whether standard output's reader has gone (``| head`` read what it wanted and left): a pipe or
    socket whose other end closed polls as an error or hang-up on our end."""
    try:
        fd = sys.stdout.fileno()
        poller = select.poll()
        poller.register(fd, select.POLLOUT)
        events = poller.poll(0)
    except (AttributeError, OSError, ValueError):
        return False
    return any(ev & (select.POLLERR | select.POLLHUP) for _fd, ev in events)


def entry(main: Callable[[], int]) -> Callable[[], NoReturn]:
    """Wrap a console-script ``main`` with the conventions every tool shares.

    A closed standard output (``roomba-fleet watch --once | head -1``) ends the program quietly, as it
    does for cat. SIGPIPE itself stays ignored (Python's default) rather than reset to the default action:
    that would also kill a daemon silently when a *socket* peer goes away (a ``socket://`` serial port
    whose simulator restarts); a broken pipe that is not standard output is re-raised.
    """

    def run() -> NoReturn:
        try:
            code = main()
        except KeyboardInterrupt:
            code = EXIT_INTERRUPTED
        except BrokenPipeError:
            if not stdout_closed():
                raise
            try:
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            except OSError:
                pass
            code = EXIT_FAILED
        sys.exit(code)

    return run
