"""The README and ``docs/`` stay honest, without running a drill:

- every relative link points to a file of this repository, and a ``#anchor`` into a markdown
  page to one of its headings (GitHub's slugs);
- every page of ``docs/`` is linked from the README or ``docs/README.md``, and every page is
  reachable from the README;
- every ``fleet`` / ``devicesim`` command of a ``sh`` or ``console`` example parses with the
  real argparse parser, ``make`` names a target of the Makefile (and ``make drill`` /
  ``make bench`` pass their ``ARGS`` to parsers that accept them);
- drill files (``toml``), ``json`` and ``python`` examples parse.

Each example is its own test, named ``page:line``, so a failure names the example to fix.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import re
import shlex
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import pytest

import devicesim.cli
import fleet.cli
from bench.__main__ import build_parser as bench_parser
from fleet.drill import spec

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
INDEX = ROOT / "docs" / "README.md"
PAGES = (README, *sorted((ROOT / "docs").glob("*.md")))

FENCE = re.compile(r"^\s*(```+|~~~+)\s*([\w+-]*)")
HEADING = re.compile(r"^(#{1,6})\s+(.+?)\s*#*\s*$")
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
CODE_SPAN = re.compile(r"`[^`]*`")
SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")
ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
SHELL_LANGS = {"sh", "console"}
OPERATORS = set("();<>|&")


def rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


@dataclass(frozen=True, slots=True)
class Block:
    lang: str
    first_line: int  # 1-based line number of the block's first content line
    lines: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Page:
    """A markdown page split into fenced blocks and prose (fences blanked, same line count)."""

    path: Path
    prose: tuple[str, ...]
    blocks: tuple[Block, ...]


@cache
def page(path: Path) -> Page:
    prose: list[str] = []
    blocks: list[Block] = []
    fence: str | None = None
    lang, start = "", 0
    body: list[str] = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        match = FENCE.match(line)
        if fence is None and match:
            fence, lang, start, body = match.group(1), match.group(2), number + 1, []
            prose.append("")
        elif fence is not None and line.strip().startswith(fence) and not line.strip(fence[0]):
            blocks.append(Block(lang, start, tuple(body)))
            fence = None
            prose.append("")
        elif fence is not None:
            body.append(line)
            prose.append("")
        else:
            prose.append(line)
    assert fence is None, f"{rel(path)}: unclosed code fence"
    return Page(path, tuple(prose), tuple(blocks))


# ---------------------------------------------------------------------------------------------
# Links and anchors
# ---------------------------------------------------------------------------------------------


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: the rendered text, lower case, punctuation dropped
    (letters, digits, ``_`` and ``-`` kept), spaces turned into ``-``."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)
    return re.sub(r"[^\w\- ]", "", text.strip().lower()).replace(" ", "-")


@cache
def anchors(path: Path) -> frozenset[str]:
    seen: dict[str, int] = {}
    found: set[str] = set()
    for line in page(path).prose:
        match = HEADING.match(line)
        if match:
            base = slug(match.group(2))
            count = seen.get(base, 0)
            seen[base] = count + 1
            found.add(base if count == 0 else f"{base}-{count}")
    return frozenset(found)


def links(path: Path) -> Iterator[tuple[int, str]]:
    """(line, target) of every markdown link outside code."""
    text = "\n".join(CODE_SPAN.sub("", line) for line in page(path).prose)
    for match in LINK.finditer(text):
        yield text.count("\n", 0, match.start()) + 1, match.group(1)


def resolve(source: Path, target: str) -> tuple[Path, str]:
    """A relative link target -> (file, anchor); the file is ``source`` for ``#anchor``."""
    file, _, anchor = target.partition("#")
    return (source.parent / file).resolve() if file else source, anchor


LINKS = [pytest.param(path, target, id=f"{rel(path)}:{line}:{target}")
         for path in PAGES for line, target in links(path) if not SCHEME.match(target)]


@pytest.mark.parametrize(("source", "target"), LINKS)
def test_relative_link_resolves(source: Path, target: str) -> None:
    file, anchor = resolve(source, target)
    assert file.is_relative_to(ROOT), f"{target} leaves the repository"
    assert file.exists(), f"{target}: no such file {rel(file)}"
    if anchor:
        assert file.suffix == ".md", f"{target}: an anchor into a file that is not markdown"
        assert anchor in anchors(file), (
            f"{target}: {rel(file)} has no heading with anchor #{anchor} "
            f"(it has: {', '.join(sorted(anchors(file)))})")


def test_docs_have_links_to_check() -> None:
    assert len(LINKS) > 20  # the scanner found the links (a broken regex would pass silently)


@pytest.mark.parametrize("doc", [p for p in PAGES if p != README], ids=rel)
def test_every_docs_page_is_linked_from_the_readme_or_the_index(doc: Path) -> None:
    linked = {resolve(source, target)[0] for source in (README, INDEX)
              for _, target in links(source) if not SCHEME.match(target) and source != doc}
    assert doc in linked, f"{rel(doc)} is linked from neither README.md nor docs/README.md"


def test_every_page_is_reachable_from_the_readme() -> None:
    reached, todo = {README}, [README]
    while todo:
        source = todo.pop()
        for _, target in links(source):
            if SCHEME.match(target):
                continue
            file = resolve(source, target)[0]
            if file in PAGES and file not in reached:
                reached.add(file)
                todo.append(file)
    assert reached == set(PAGES), f"not reachable: {sorted(rel(p) for p in set(PAGES) - reached)}"


# ---------------------------------------------------------------------------------------------
# Command examples
# ---------------------------------------------------------------------------------------------


def commands(block: Block) -> Iterator[tuple[int, str]]:
    """(line, command) of a shell block: every line of ``sh``, the ``$ `` lines of
    ``console``; a trailing backslash continues a command on the next line."""
    pending: tuple[int, str] | None = None
    for offset, line in enumerate(block.lines):
        number = block.first_line + offset
        if pending is not None:
            text = pending[1] + " " + line.strip()
            start = pending[0]
        elif block.lang == "console":
            if not line.startswith("$ "):
                continue
            start, text = number, line[2:]
        else:
            start, text = number, line
        if text.endswith("\\"):
            pending = (start, text[:-1].rstrip())
            continue
        pending = None
        if text.strip():
            yield start, text.strip()


def words(command: str) -> list[str]:
    """The words of a simple command: ``# comments``, leading ``VAR=value`` and a
    ``.venv/bin/`` prefix dropped; cut at the first shell operator (``&``, ``|``, ``;``, ...)."""
    lex = shlex.shlex(command, posix=True, punctuation_chars=True)
    lex.whitespace_split = True
    lex.commenters = "#"
    out: list[str] = []
    for token in lex:
        if set(token) <= OPERATORS:
            break
        out.append(token)
    while out and ASSIGNMENT.match(out[0]):
        out.pop(0)
    if out:
        out[0] = out[0].removeprefix(".venv/bin/")
    return out


@cache
def parser(program: str) -> argparse.ArgumentParser:
    """The program's real parser, with abbreviated options refused (``--report`` must not
    pass for ``--report-dir``): examples spell options out."""
    builders: dict[str, Callable[[], argparse.ArgumentParser]] = {
        "fleet": fleet.cli.build_parser, "devicesim": devicesim.cli.build_parser,
        "bench": bench_parser}
    root = builders[program]()
    todo = [root]
    while todo:
        current = todo.pop()
        current.allow_abbrev = False
        for action in current._actions:
            if isinstance(action, argparse._SubParsersAction):
                todo.extend(action.choices.values())
    return root


@cache
def make_targets() -> tuple[str, ...]:
    """The Makefile's targets in order (the first is what a bare ``make`` runs)."""
    text = (ROOT / "Makefile").read_text()
    return tuple(re.findall(r"^([A-Za-z0-9_-]+)\s*:(?!=)", text, re.MULTILINE))


def assert_parses(program: str, argv: list[str], where: str) -> None:
    err = io.StringIO()
    code: str | int | None = None
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
            parser(program).parse_args(argv)
    except SystemExit as e:  # argparse: 0 for --help / --version, 2 for a usage error
        code = e.code
    assert code in (0, None), f"{where}: {program} {shlex.join(argv)}\n{err.getvalue()}"


def check_make(argv: list[str], where: str) -> None:
    variables = dict(a.split("=", 1) for a in argv if ASSIGNMENT.match(a))
    targets = [a for a in argv if not ASSIGNMENT.match(a)] or [make_targets()[0]]
    for target in targets:
        assert target in make_targets(), f"{where}: make {target}: no such Makefile target"
    extra = shlex.split(variables.get("ARGS", ""))
    if "drill" in targets:
        assert_parses("fleet", ["drill", *extra], where)
    if "bench" in targets:
        assert_parses("bench", extra, where)


EXAMPLES = [(f"{rel(path)}:{line}", argv)
            for path in PAGES for block in page(path).blocks if block.lang in SHELL_LANGS
            for line, command in commands(block)
            if (argv := words(command)) and argv[0] in ("fleet", "devicesim", "make")]


@pytest.mark.parametrize(("where", "argv"), EXAMPLES,
                         ids=[f"{where}:{shlex.join(argv)}" for where, argv in EXAMPLES])
def test_command_example_parses(where: str, argv: list[str]) -> None:
    if argv[0] == "make":
        check_make(argv[1:], where)
    else:
        assert_parses(argv[0], argv[1:], where)


def test_docs_have_commands_to_check() -> None:
    assert {argv[0] for _, argv in EXAMPLES} == {"fleet", "devicesim", "make"}
    assert len(EXAMPLES) > 20


INLINE_MAKE = [pytest.param(span, id=f"{rel(path)}:{number}:{span}")
               for path in PAGES for number, line in enumerate(page(path).prose, start=1)
               for span in (m.group(0).strip("`") for m in CODE_SPAN.finditer(line))
               if span.startswith("make ")]


@pytest.mark.parametrize("span", INLINE_MAKE)
def test_make_in_prose_names_a_target(span: str) -> None:
    check_make(shlex.split(span)[1:], span)


# ---------------------------------------------------------------------------------------------
# Drill files, JSON and Python examples
# ---------------------------------------------------------------------------------------------


def blocks(*langs: str) -> list[Any]:
    return [pytest.param(block, id=f"{rel(path)}:{block.first_line}")
            for path in PAGES for block in page(path).blocks if block.lang in langs]


@pytest.mark.parametrize("block", blocks("toml"))
def test_drill_file_example_is_a_valid_drill(block: Block) -> None:
    drill = spec.parse("\n".join(block.lines), source="example")
    assert drill.steps


@pytest.mark.parametrize("block", blocks("json"))
def test_json_example_parses(block: Block) -> None:
    text, decoder, position, values = "\n".join(block.lines), json.JSONDecoder(), 0, 0
    while text[position:].strip():
        position += len(text[position:]) - len(text[position:].lstrip())
        _, position = decoder.raw_decode(text, position)
        values += 1
    assert values


@pytest.mark.parametrize("block", blocks("python"))
def test_python_example_compiles(block: Block) -> None:
    compile("\n".join(block.lines), f"line {block.first_line}", "exec")


# ---------------------------------------------------------------------------------------------
# The checks themselves fail when they should
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("heading", "anchor"), [
    ("`fleet` job commands (mirroring `aws iot`)", "fleet-job-commands-mirroring-aws-iot"),
    ("Service settings (undocumented AWS corners)", "service-settings-undocumented-aws-corners"),
    ("`fleet drill`: the main job", "fleet-drill-the-main-job"),
    ("Set-up: two commands on a fresh machine", "set-up-two-commands-on-a-fresh-machine"),
    ("Spec §12–13 → [docs](x.md)", "spec-1213--docs"),
])
def test_slug_follows_github(heading: str, anchor: str) -> None:
    assert slug(heading) == anchor


def test_words_drop_comments_assignments_and_what_follows_an_operator() -> None:
    assert words("PYTHONPATH=x .venv/bin/fleet up &   # prints its endpoints") == ["fleet", "up"]
    assert words("fleet describe-job --job-id 'a b' | jq .") == [
        "fleet", "describe-job", "--job-id", "a b"]
    assert words("devicesim run --broker mqtt://h:1 --mix a=0.9,b=0.1") == [
        "devicesim", "run", "--broker", "mqtt://h:1", "--mix", "a=0.9,b=0.1"]


def test_console_commands_are_the_prompt_lines_with_their_continuations() -> None:
    block = Block("console", 10, ("$ fleet create-job --job-id a \\", "    --targets t",
                                  "fleet up: not a command", "$ fleet up"))
    assert list(commands(block)) == [(10, "fleet create-job --job-id a --targets t"),
                                     (13, "fleet up")]


@pytest.mark.parametrize("argv", [
    ["fleet", "drill", "--no-such-flag"],
    ["fleet", "drill", "--report", "out/"],  # an abbreviation of --report-dir
    ["fleet", "up", "--mqtt-port", "any"],
    ["fleet", "describe-job", "--job-id"],
    ["devicesim", "run", "--count", "10"],  # --broker is required
])
def test_a_stale_example_fails(argv: list[str]) -> None:
    with pytest.raises(AssertionError, match="usage"):
        assert_parses(argv[0], argv[1:], "example")


def test_help_and_version_are_fine() -> None:
    assert_parses("fleet", ["drill", "--help"], "example")
    assert_parses("devicesim", ["--version"], "example")


def test_an_unknown_make_target_fails() -> None:
    with pytest.raises(AssertionError, match="no such Makefile target"):
        check_make(["deploy"], "example")
    with pytest.raises(AssertionError, match="usage"):
        check_make(["drill", "ARGS=--no-such-flag"], "example")
