"""Key-by-key comments for recipe YAMLs, taken from the docstrings — what ``--print_config=comments`` shows.

``ra3 config document NAME`` prints a recipe with every key that carries a value commented: a comment already
there is kept (a recipe may say why it picked a value), a missing one is the key's docstring, first sentence.
``--write`` updates the file; ``--check`` lists the undocumented keys and fails. ``tests/test_config_docs.py``
keeps every shipped recipe documented this way, so a renamed or undocumented argument shows up there.
"""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path
from typing import Callable

KEY = re.compile(r"^(?P<indent>\s*)(?P<dash>- )?(?P<key>[A-Za-z_][\w.]*):(?P<value>.*)$")
MAX_COMMENT = 110


def command_of(text: str) -> str:
    """``em`` for an EM recipe (top-level ``em:``/``estep:`` sections), else ``fit``."""
    return "em" if re.search(r"^(em|estep|mstep):", text, re.MULTILINE) else "fit"


def commented_dump(recipe: str | Path, run: Callable[[list[str]], None]) -> str:
    """The ``--print_config=comments`` output of ``ra3 fit|em -c recipe``; ``run`` is the ``ra3`` command's entry
    point (``ra3.cli.main``, passed in: this module is a leaf the CLI imports)."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):
        run([command_of(Path(recipe).read_text()), "-c", str(recipe), "--print_config=comments"])
    return out.getvalue()


def _walk(lines: list[str]):
    """(line index, key path, match) of every ``key:`` line, the path built from indentation; a list item's keys
    nest under its list's key and ``-`` (an item at the list key's own indent, as YAML dumps write it, too)."""
    stack: list[tuple[int, str]] = []
    for i, line in enumerate(lines):
        m = KEY.match(line)
        if not m:
            continue
        indent = len(m["indent"])
        if m["dash"]:
            while stack and (stack[-1][0] > indent or stack[-1] == (indent, "-")):
                stack.pop()
            stack.append((indent, "-"))
            indent += 2
        while stack and stack[-1][0] >= indent:
            stack.pop()
        stack.append((indent, m["key"]))
        yield i, tuple(name for _, name in stack), m


def descriptions(dump: str) -> dict[tuple[str, ...], str]:
    """Key path -> the comment block above it in a ``--print_config=comments`` dump, as one line without its
    ``(type: …, default: …)`` tail."""
    lines = dump.splitlines()
    out = {}
    for i, path, _ in _walk(lines):
        block = []
        j = i - 1
        while j >= 0 and lines[j].strip().startswith("#"):
            block.insert(0, lines[j].strip().lstrip("#").strip())
            j -= 1
        text = " ".join(block)
        text = re.sub(r"\s*\((required, )?type: .*$", "", text).strip()
        if text:
            out[path] = text
    return out


def _first_sentence(text: str) -> str:
    text = re.split(r"(?<=[a-z0-9)`'\"])\.(?:\s|(?=[A-Z]))", text + " ", maxsplit=1)[0].rstrip(". ")
    return text if len(text) <= MAX_COMMENT else text[: MAX_COMMENT - 1].rsplit(" ", 1)[0] + " …"


def _has_comment(value: str) -> bool:
    return bool(re.search(r"(^|\s)#", re.sub(r"'[^']*'|\"(?:[^\"\\]|\\.)*\"", "''", value)))


def recipe_descriptions(recipe: str | Path, run: Callable[[list[str]], None]) -> dict[tuple[str, ...], str]:
    """Key path -> docstring text for ``recipe``'s command (run by ``run``, see :func:`commented_dump`); an EM
    recipe's ``trainer`` (a plain dict there) is described by the Trainer's docstrings, as in a fit recipe."""
    docs = descriptions(commented_dump(recipe, run))
    if command_of(Path(recipe).read_text()) == "em":
        from ra3.data.skillworld import RECIPES

        fit_docs = descriptions(commented_dump(RECIPES / "ntp.yaml", run))
        docs.update({k: v for k, v in fit_docs.items() if k[0] == "trainer" and k not in docs})
    return docs


def document(recipe: str | Path, docs: dict[tuple[str, ...], str]) -> tuple[str, list[str]]:
    """(the recipe with a comment on every key that has a value, keys no docstring in ``docs`` —
    :func:`recipe_descriptions` — describes). Existing comments are kept; a generated one starts at column 58 (or one
    space after a long line). A ``class_path`` is described by its class's docstring (what the dump shows above
    ``init_args``)."""
    text = Path(recipe).read_text()
    lines = text.splitlines()
    missing = []
    for i, path, m in _walk(lines):
        if not m["value"].strip() or _has_comment(m["value"]):
            continue
        if path[-1] == "init_args":  # inline arguments of the class_path above
            doc = "its arguments"
        else:
            doc = docs.get(path[:-1] + ("init_args",) if path[-1] == "class_path" else path)
        if doc is None:
            missing.append(".".join(path))
            continue
        lines[i] = f"{lines[i].rstrip().ljust(57)} # {_first_sentence(doc)}"
    return "\n".join(lines) + ("\n" if text.endswith("\n") else ""), missing


def undocumented(recipe: str | Path, docs: dict[tuple[str, ...], str]) -> list[str]:
    """Keys of ``recipe`` that carry a value but no comment (whether or not a docstring could supply one)."""
    lines = Path(recipe).read_text().splitlines()
    new, missing = document(recipe, docs)
    new_lines = new.splitlines()
    added = [".".join(path) for i, path, _ in _walk(lines) if new_lines[i] != lines[i]]
    return sorted(set(missing) | set(added))
