"""The outbox's lock works without ``fcntl`` (Windows has none) and keeps two writers from losing each other's
items."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

from theratwin.dicom.outbox import Outbox

# A meta-path hook that makes `import fcntl` fail, as it does on Windows.
_NO_FCNTL = textwrap.dedent("""
    import importlib.abc, sys
    class _NoFcntl(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "fcntl":
                raise ModuleNotFoundError("No module named 'fcntl'", name="fcntl")
            return None
    sys.modules.pop("fcntl", None)
    sys.meta_path.insert(0, _NoFcntl())
""")


def _python(code: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=timeout,
                          env=dict(os.environ))


def test_core_and_outbox_work_where_fcntl_does_not_exist(tmp_path: Path) -> None:
    code = _NO_FCNTL + textwrap.dedent("""
        try:
            import fcntl
        except ImportError:
            pass
        else:
            raise SystemExit("the hook did not block fcntl")
        import theratwin
        from pathlib import Path
        theratwin.pipeline.Pipeline()  # imports every built-in stage, the DICOM and FHIR pushes with them
        from theratwin.dicom.outbox import Outbox
        root = Path(sys.argv[1])
        (root / "item.bin").write_bytes(b"x" * 10)
        box = Outbox(root / "outbox")
        box.add("pacs", root / "item.bin", key="k", destination="d")
        rep = box.deliver("pacs", "d", lambda path, item: None)
        assert rep.sent == ["k"], rep
        print("OK", "fcntl" in sys.modules)
    """)
    proc = _python(code, str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split() == ["OK", "False"]


_WRITER = textwrap.dedent("""
    import sys
    from pathlib import Path
    from theratwin.dicom.outbox import Outbox
    root, name, n = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    src = root / f"{name}.bin"
    src.write_bytes(name.encode() * 50)
    box = Outbox(root / "outbox")
    (root / f"{name}.ready").touch()
    while not all((root / f"w{i}.ready").exists() for i in (1, 2)):
        pass
    for i in range(n):
        box.add("pacs", src, key=f"{name}-{i}", destination="pacs-1")
        if i % 3 == 0:
            box.mark_failed("pacs", box.pending("pacs", "pacs-1")[0], f"{name} failed once")
""")


def test_two_writers_on_one_outbox_lose_nothing(tmp_path: Path) -> None:
    """Two processes add to one channel at the same moment; every item and every attempt is in the manifest."""
    n = 60
    procs = [subprocess.Popen([sys.executable, "-c", _WRITER, str(tmp_path), name, str(n)], env=dict(os.environ),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for name in ("w1", "w2")]
    for p in procs:
        _, err = p.communicate(timeout=180)
        assert p.returncode == 0, err[-3000:]
    items = Outbox(tmp_path / "outbox").items("pacs")
    assert sorted(i.key for i in items) == sorted(f"w{w}-{i}" for w in (1, 2) for i in range(n))
    assert sum(i.attempts for i in items) == 2 * len(range(0, n, 3))
    manifest = json.loads((tmp_path / "outbox" / "pacs" / "manifest.json").read_text())
    assert len(manifest["items"]) == 2 * n
    assert not list((tmp_path / "outbox" / "pacs").glob(".*.tmp"))
