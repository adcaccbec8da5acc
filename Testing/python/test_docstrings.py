"""Every public class, function and method of the core package has a docstring.

Public: not in an underscore module or package, not underscore-named, not a dunder, and (for a method) in a
public class. Read with ``ast`` (nothing imported), so a module that is hard to import is checked as well.
Overloads (``@typing.overload``) are signatures of a documented implementation and are not counted.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "Logic" / "theratwin"


def _is_overload(node: ast.FunctionDef | ast.AsyncFunctionDef) -> bool:
    return any((isinstance(d, ast.Name) and d.id == "overload") or (isinstance(d, ast.Attribute) and d.attr == "overload")
               for d in node.decorator_list)


def undocumented(source: str, module: str = "<string>") -> tuple[int, list[str]]:
    """Count the public definitions in ``source`` and list those without a docstring as ``module:line name``."""
    count, missing = 0, []

    def walk(body: list[ast.stmt], prefix: str) -> None:
        nonlocal count
        for node in body:
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                continue
            if node.name.startswith("_"):  # private, and dunders (their meaning is the language's)
                continue
            if not isinstance(node, ast.ClassDef) and _is_overload(node):
                continue
            count += 1
            if ast.get_docstring(node) is None:
                missing.append(f"{module}:{node.lineno} {prefix}{node.name}")
            if isinstance(node, ast.ClassDef):
                walk(node.body, f"{prefix}{node.name}.")

    walk(ast.parse(source).body, "")
    return count, missing


def public_modules() -> list[Path]:
    """The package's modules outside underscore-named modules and packages (``__init__.py`` included)."""
    return [path for path in sorted(PACKAGE.rglob("*.py"))
            if not any(part.startswith("_") and part != "__init__.py" for part in path.relative_to(PACKAGE).parts)]


def test_the_checker_finds_what_is_undocumented() -> None:
    source = '''
class Public:
    """Documented."""

    def method(self): return 1

    def _private(self): pass

    def __len__(self): return 0

    class Inner:
        pass

class _Private:
    def method(self): pass

def function(): pass

async def documented():
    """Yes."""

def _helper(): pass
'''
    count, missing = undocumented(source, "m.py")
    assert count == 5
    assert missing == ["m.py:5 Public.method", "m.py:11 Public.Inner", "m.py:17 function"]


def test_every_public_definition_has_a_docstring() -> None:
    total, missing = 0, []
    modules = public_modules()
    assert len(modules) > 80  # the walk found the package
    for path in modules:
        count, gaps = undocumented(path.read_text(encoding="utf-8"), str(path.relative_to(ROOT)))
        total += count
        missing += gaps
    assert total > 600
    assert not missing, f"{len(missing)} of {total} public definitions have no docstring:\n" + "\n".join(missing)
