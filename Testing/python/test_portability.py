"""The core and the Slicer modules run on Windows, macOS and Linux (docs/architecture.md, "Platforms").

Checked on every Python file of ``Logic/theratwin``, ``Modules`` and ``TheraTwinExtension``:

- no standard-library module that exists on one platform only (``fcntl``, ``pwd``, ``termios`` ... are Unix-only,
  ``msvcrt``, ``winreg`` ... Windows-only; Python documentation, "Availability"), anywhere in the file;
- no shell-outs or Unix-only process calls (``subprocess``, ``os.system``/``popen``/``fork``/``spawn*``/``exec*``,
  ``os.getuid`` ...): the core must not depend on programs being installed;
- symbolic links only with a fallback for ``OSError`` (Windows refuses them without a privilege);
- text files read and written with an explicit encoding (Windows' default is the ANSI code page, not UTF-8,
  outside Slicer, whose launcher sets PYTHONUTF8=1: Slicer v5.12.0 SuperBuild/External_python.cmake);
- no hard-coded ``/tmp``.

The same is then shown at run time: every module of the core imports, and a pipeline is built, with the
Unix-only modules made unimportable.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CODE = sorted([*(ROOT / "Logic" / "theratwin").rglob("*.py"), *(ROOT / "Modules").rglob("*.py"),
               *(ROOT / "TheraTwinExtension").glob("*.py")])

UNIX_ONLY = {"fcntl", "termios", "tty", "pty", "pwd", "grp", "resource", "posix", "crypt", "syslog", "spwd", "nis",
             "readline", "curses", "_posixsubprocess"}
WINDOWS_ONLY = {"msvcrt", "winreg", "_winapi", "winsound", "nt"}
#: os attributes that run programs or exist on Unix only.
FORBIDDEN_OS = {"system", "popen", "fork", "forkpty", "execv", "execve", "execl", "execlp", "execvp", "execvpe",
                "spawnl", "spawnle", "spawnlp", "spawnv", "spawnve", "spawnvp", "getuid", "geteuid", "getgid",
                "getegid", "getpgid", "killpg", "setsid", "chown", "lchown", "mkfifo", "sync", "uname", "getloadavg",
                "statvfs", "wait", "waitpid", "nice"}


def _handlesOSError(handler: ast.ExceptHandler) -> bool:
    names = {ast.unparse(handler.type)} if handler.type is not None and not isinstance(handler.type, ast.Tuple) \
        else {ast.unparse(e) for e in getattr(handler.type, "elts", [])}
    return handler.type is None or bool(names & {"OSError", "Exception", "NotImplementedError"})


def portabilityOffences(path: Path, root: Path = ROOT) -> list[str]:
    text = path.read_text(encoding="utf-8")
    tree = ast.parse(text, filename=str(path))
    guarded: set[int] = set()  # ids of call nodes inside a try that handles OSError
    for node in ast.walk(tree):
        if isinstance(node, ast.Try) and any(_handlesOSError(h) for h in node.handlers):
            for statement in node.body:
                guarded.update(id(n) for n in ast.walk(statement))
    offences = []
    name = path.relative_to(root).as_posix()
    for node in ast.walk(tree):
        modules: list[str] = []
        if isinstance(node, ast.Import):
            modules = [a.name.split(".")[0] for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            modules = [node.module.split(".")[0]]
        for module in modules:
            if module in UNIX_ONLY | WINDOWS_ONLY:
                offences.append(f"{name}:{node.lineno}: imports {module}, which exists on one platform only")
            if module == "subprocess":
                offences.append(f"{name}:{node.lineno}: imports subprocess (no shell-outs in the core or modules)")
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "os" \
                and node.attr in FORBIDDEN_OS:
            offences.append(f"{name}:{node.lineno}: os.{node.attr} runs a program or is Unix-only")
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            method = node.func.attr
            keywords = {k.arg for k in node.keywords}
            if method in ("symlink", "symlink_to", "hardlink_to", "link") and id(node) not in guarded:
                offences.append(f"{name}:{node.lineno}: {method} without an OSError fallback (Windows)")
            if method in ("read_text", "write_text") and "encoding" not in keywords:
                offences.append(f"{name}:{node.lineno}: {method}() without encoding=")
            if method == "open" and "encoding" not in keywords and not _binaryMode(node, 0):
                offences.append(f"{name}:{node.lineno}: .open() in text mode without encoding=")
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "open" \
                and "encoding" not in {k.arg for k in node.keywords} and not _binaryMode(node, 1):
            offences.append(f"{name}:{node.lineno}: open() in text mode without encoding=")
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.startswith("/tmp") \
                and not _isDocstring(node, tree):
            offences.append(f"{name}:{node.lineno}: hard-coded {node.value!r}")
    return offences


def _binaryMode(call: ast.Call, position: int) -> bool:
    mode = next((k.value for k in call.keywords if k.arg == "mode"), None)
    if mode is None and len(call.args) > position:
        mode = call.args[position]
    return isinstance(mode, ast.Constant) and isinstance(mode.value, str) and "b" in mode.value


def _isDocstring(constant: ast.Constant, tree: ast.Module) -> bool:
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and first.value is constant:
                return True
    return False


@pytest.mark.parametrize("path", CODE, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_portable(path: Path) -> None:
    assert portabilityOffences(path) == []


def test_the_checker_catches_each_fault(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text(textwrap.dedent('''
        """Docstring mentioning /tmp is fine."""
        import fcntl
        import subprocess
        import os
        from pathlib import Path
        def f(p: Path):
            import msvcrt
            os.system("ls")
            p.symlink_to("x")
            try:
                p.symlink_to("y")
            except OSError:
                pass
            p.read_text()
            p.write_text("x", encoding="utf-8")
            open(p)
            open(p, "rb")
            p.open("w")
            return "/tmp/out"
        '''), encoding="utf-8")
    found = [o.split(":", 2)[2].strip() for o in portabilityOffences(bad, root=tmp_path)]
    assert any("imports fcntl" in o for o in found) and any("imports msvcrt" in o for o in found)
    assert any("imports subprocess" in o for o in found) and any("os.system" in o for o in found)
    assert sum("symlink_to without an OSError fallback" in o for o in found) == 1
    assert sum("without encoding=" in o for o in found) == 3  # read_text, open(p), p.open("w")
    assert any("hard-coded '/tmp/out'" in o for o in found) and not any("Docstring" in o for o in found)


def test_the_core_imports_with_unix_only_modules_unavailable() -> None:
    """Import every module of ``theratwin`` and build a pipeline with its stages, in a fresh interpreter where the
    Unix-only modules (fcntl among them) raise ModuleNotFoundError as on Windows."""
    # posix and _posixsubprocess are the interpreter's own (os, subprocess) and have Windows counterparts
    blocked = sorted(UNIX_ONLY - {"posix", "_posixsubprocess"})
    code = textwrap.dedent(f"""
        import importlib, importlib.abc, json, pkgutil, sys
        BLOCKED = set({blocked!r})

        class Windows(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in BLOCKED:
                    raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
                return None

        sys.meta_path.insert(0, Windows())
        for name in BLOCKED:
            sys.modules.pop(name, None)
        sys.path.insert(0, {str(ROOT / "Logic")!r})
        import theratwin
        failed = {{}}
        for info in pkgutil.walk_packages(theratwin.__path__, "theratwin."):
            if info.name == "theratwin.__main__":  # runs the command line when imported
                continue
            try:
                importlib.import_module(info.name)
            except Exception as error:
                failed[info.name] = f"{{type(error).__name__}}: {{error}}"
        from theratwin.pipeline import Pipeline
        from theratwin.pipeline.core import STAGES, load_builtin_stages
        Pipeline()
        load_builtin_stages()
        print(json.dumps({{"failed": failed, "stages": sorted(STAGES.names())}}))
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["failed"] == {}
    assert {"registration", "kinetics", "dosimetry", "radiobiology", "twin", "report", "dicom_export",
            "fhir_export"} <= set(out["stages"])
