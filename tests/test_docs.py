"""The documentation keeps up with the code: every public name has a docstring and a place in the
API reference, ``OAuthManager``'s docstring and the arguments page list every keyword argument
with its default, and the reference pages name every exception, CLI exit code, log event and
metric there is; the layout docs/ARCHITECTURE.md draws keeps its sizes (issue 24: no module
over 400 lines, no class over 300). (tests/test_readme.py runs the pages' code blocks; ``mkdocs
build --strict`` in ./scripts/check resolves their links and cross-references.)
"""

from __future__ import annotations

import ast
import importlib
import inspect
import re
import typing
from types import ModuleType
from typing import Any

import pytest

import instantly_oauth_async
from instantly_oauth_async import OAuthManager
from instantly_oauth_async._cli import failures as _cli
from tests._tree import SOURCE, SOURCE_PACKAGE

DOCS = SOURCE / "docs"
PUBLIC_MODULES = [
    "instantly_oauth_async", "instantly_oauth_async.redis", "instantly_oauth_async.sqlite",
    "instantly_oauth_async.testing", "instantly_oauth_async.otel", "instantly_oauth_async.web",
    "instantly_oauth_async.web.aiohttp", "instantly_oauth_async.web.asgi",
]


def module(name: str) -> ModuleType:
    return importlib.import_module(name)


def public_names() -> list[tuple[str, str, Any]]:
    """(module, name, object) for every name of every public module's ``__all__``."""
    return [(m, n, getattr(module(m), n)) for m in PUBLIC_MODULES for n in module(m).__all__
            if not n.startswith("__")]


def public_members(cls: type) -> list[tuple[str, Any]]:
    """A class's own public methods and properties (not its fields or inherited members)."""
    found = []
    for name, value in vars(cls).items():
        if name.startswith("_"):
            continue
        if isinstance(value, property):
            found.append((name, value.fget))
        elif isinstance(value, (staticmethod, classmethod)):
            found.append((name, value.__func__))
        elif inspect.isfunction(value):
            found.append((name, value))
    return found


def page(path: str) -> str:
    return (DOCS / path).read_text(encoding="utf-8")


@pytest.mark.parametrize("name", PUBLIC_MODULES)
def test_every_public_module_has_a_docstring(name: str) -> None:
    assert (module(name).__doc__ or "").strip(), name


def test_every_public_name_and_its_methods_have_a_docstring() -> None:
    missing = []
    for mod, name, obj in public_names():
        # an alias such as Hook (Callable[[Event], object]) is no class: Python 3.10's
        # inspect.isclass says it is (there, isinstance(list[int], type) is True)
        if not ((inspect.isclass(obj) and typing.get_origin(obj) is None)
                or inspect.isfunction(obj)):
            continue
        doc = (obj.__doc__ or "").strip()
        # attrs writes no docstring; a dataclass's made-up one is its signature
        if not doc or doc.startswith(f"{name}("):
            missing.append(f"{mod}.{name}")
        if inspect.isclass(obj):
            missing += [f"{mod}.{name}.{member}" for member, function in public_members(obj)
                        if not inspect.getdoc(getattr(obj, member))
                        and not (function.__doc__ or "").strip()]
    assert missing == []


def test_every_public_name_is_on_a_reference_page() -> None:
    text = "".join(p.read_text(encoding="utf-8") for p in (DOCS / "reference" / "api").glob("*.md"))
    for mod, name, _ in public_names():
        assert f"::: {mod}.{name}\n" in text, f"{mod}.{name}"
    for mod in PUBLIC_MODULES:
        assert f"::: {mod}\n" in text, mod
    # public paths only: the private module layout is free to change
    assert not re.search(r":::\s*\S*\._", text)


def keyword_arguments() -> list[inspect.Parameter]:
    return [p for p in inspect.signature(OAuthManager).parameters.values()
            if p.kind is inspect.Parameter.KEYWORD_ONLY]


def default_text(value: Any) -> str:
    """How a default is written in the docstring and on the arguments page."""
    if isinstance(value, (bool, float, int, str)) or value is None:
        return repr(value)
    if value is instantly_oauth_async.DEFAULT_STANDARD_LIMIT:
        return "DEFAULT_STANDARD_LIMIT"
    if value is instantly_oauth_async.DEFAULT_STATUS_LIMIT:
        return "DEFAULT_STATUS_LIMIT"
    if isinstance(value, instantly_oauth_async.RateLimit):
        return f"RateLimit({value.count}, per={value.per})"
    if value == ():
        return "()"
    return f"{type(value).__name__}()"


def test_the_manager_docstring_lists_every_keyword_argument_with_its_default() -> None:
    # cleaned as help() shows it: Python 3.13's compiler strips the indentation that 3.10's keeps
    doc = inspect.getdoc(OAuthManager) or ""
    args = doc.split("Args:", 1)[1].split("Raises:", 1)[0]
    entries = dict(re.findall(r"^    (\w+): (.*?)(?=^    \w+: |\Z)", args, re.M | re.S))
    assert "api_key" in entries
    for parameter in keyword_arguments():
        entry = entries.get(parameter.name)
        assert entry is not None, parameter.name
        flat = " ".join(entry.replace("``", "").split())
        assert f"default {default_text(parameter.default)}" in flat, (parameter.name, entry)
    assert "ConfigurationError" in doc.split("Raises:", 1)[1]
    # help(OAuthManager) shows them: the class docstring is what it prints first
    assert "poll_interval:" in (inspect.getdoc(OAuthManager) or "")


def test_the_arguments_page_has_every_keyword_argument_with_its_default() -> None:
    rows = {m[0]: m[1] for m in re.findall(r"^\| `(\w+)` \|(.*)$", page(
        "reference/manager-arguments.md"), re.M)}
    for parameter in keyword_arguments():
        assert parameter.name in rows, parameter.name
        assert default_text(parameter.default) in rows[parameter.name].replace("`", ""), (
            parameter.name, rows[parameter.name])


def test_the_exceptions_page_names_every_exception() -> None:
    text = page("reference/exceptions.md")
    for mod, name, obj in public_names():
        if inspect.isclass(obj) and issubclass(obj, BaseException):
            assert f"| `{name}`" in text, f"{mod}.{name}"


def test_the_cli_page_gives_every_exit_code() -> None:
    text = page("reference/cli.md")
    codes = (_cli.OK, _cli.NOT_ALL_CONNECTED, _cli.USAGE, _cli.NO_KEY, _cli.AUTH,
             _cli.UNREACHABLE, _cli.LIMITED, _cli.API, _cli.INTERRUPTED)
    assert codes == (0, 1, 2, 3, 4, 5, 6, 7, 130)
    exit_codes = text.split("Exit codes:", 1)[1].split("\n\n", 1)[0]
    for code in codes:
        assert re.search(rf"\b{code} \w", exit_codes), code


def test_the_logs_page_names_every_log_event_and_metric() -> None:
    text = page("reference/logs-and-metrics.md")
    source = "".join(p.read_text(encoding="utf-8")
                     for p in SOURCE_PACKAGE.rglob("*.py"))
    events = set(re.findall(r'"iox_event": "(\w+)"', source))
    assert "request_finished" in events and "session_resolved" in events
    for event in events:
        assert f"`{event}`" in text, event
    otel = (SOURCE_PACKAGE / "otel.py").read_text(encoding="utf-8")
    instruments = set(re.findall(r'^\s+"((?:http|instantly)\.[\w.]+)", unit=', otel, re.M))
    assert len(instruments) == 6
    for instrument in instruments:
        assert f"`{instrument}`" in text, instrument
    for name in ("RequestFinished", "BudgetWaited", "InitDenied", "BreakerChanged",
                 "SessionStarted", "SessionResolved"):
        assert name in text, name


def test_the_readme_is_a_front_door() -> None:
    readme = (SOURCE / "README.md").read_text(encoding="utf-8")
    assert len(readme.splitlines()) <= 150
    assert "mkdocs serve" in readme and "./scripts/check" in readme
    assert "connected_expected" in readme
    for target in re.findall(r"\]\((docs/[^)#]+)", readme):
        assert (SOURCE / target).is_file(), target


def test_no_module_over_400_lines_and_no_class_over_300() -> None:
    """A class counts from its ``class`` line to its last line (nested ones too)."""
    too_long = []
    for path in sorted(SOURCE_PACKAGE.rglob("*.py")):
        text = path.read_text(encoding="utf-8")
        name = path.relative_to(SOURCE).as_posix()
        if len(text.splitlines()) > 400:
            too_long.append(f"{name}: {len(text.splitlines())} lines")
        too_long += [f"{name}:{node.name}: {node.end_lineno - node.lineno + 1} lines"
                     for node in ast.walk(ast.parse(text, name))
                     if isinstance(node, ast.ClassDef) and node.end_lineno is not None
                     and node.end_lineno - node.lineno + 1 > 300]
    assert too_long == []
