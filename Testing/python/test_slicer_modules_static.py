"""Static checks of the Slicer modules (runs in the main environment, no Slicer needed).

Fails when a module file imports at file scope something other than the standard library, slicer, vtk, qt,
ctk, numpy, scipy (and our TheraTwinLib); when TheraTwinLib (which must stay Qt-free) imports qt/ctk; when a
Python, UI or resource file is missing from its CMakeLists.txt (or CMake lists a file that does not exist);
when a ``.ui`` file is not well-formed XML or binds a name that is not a parameter-node field (or leaves a field
unbound); when a requirements file pins or lists what Slicer bundles; or when the module layout drifts from
the template (module class, parameter node, Widget, Logic, Test; "Nuclear Medicine"; strings through ``_()``).
Each checker is also run on a deliberately broken file to show it catches the fault.
"""

from __future__ import annotations

import ast
import re
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MODULES_DIR = ROOT / "Modules"
EXTENSION_DIR = ROOT / "TheraTwinExtension"
LIB = MODULES_DIR / "TheraTwinLib"

#: What a module file may import at file scope (STYLE.md, Slicer side), besides the standard library.
ALLOWED_IN_MODULES = {"slicer", "vtk", "qt", "ctk", "numpy", "scipy", "TheraTwinLib"}
#: The adapter is tested with slicer-core, which has no Qt.
ALLOWED_IN_LIB = {"slicer", "vtk", "numpy"}
#: Slicer's own infrastructure: never in a requirements list (reinstalling it would break the application).
SLICER_INFRASTRUCTURE = {"vtk", "pip", "setuptools", "wheel", "requests", "packaging", "pythonqt"}
#: What Slicer 5.12.0 (the declared minimum) bundles, from its SuperBuild files at tag v5.12.0
#: (External_python-numpy.cmake, -scipy, -dicom-requirements, -SimpleITK): a floor above these would make
#: ensureRequirements reinstall a package Slicer ships.
SLICER_5_12_BUNDLES = {"numpy": "2.4.6", "scipy": "1.17.1", "pydicom": "3.0.2", "simpleitk": "2.5.5",
                       "highdicom": "0.27.0", "dicomweb-client": "0.61.0"}
#: pyproject core dependencies not needed inside Slicer, and the one file of the core that imports each.
NOT_NEEDED_IN_SLICER = {"tqdm": "_cli_progress.py"}  # the command line's progress bar
LIB_REQUIREMENTS = LIB / "requirements.txt"
STDLIB = set(sys.stdlib_module_names)


def scriptedModules() -> list[Path]:
    """Every scripted-module file: Modules/<Name>/<Name>.py and the hidden ones in TheraTwinExtension/."""
    files = [d / f"{d.name}.py" for d in sorted(MODULES_DIR.iterdir()) if (d / f"{d.name}.py").is_file()]
    files += sorted(p for p in EXTENSION_DIR.glob("*.py"))
    return files


# ---------------------------------------------------------------------------------------------- checkers


def fileScopeImports(path: Path) -> set[str]:
    """Top-level package names imported outside function bodies (class bodies and try/if blocks count)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                continue
            if isinstance(child, ast.Import):
                names.update(a.name.split(".")[0] for a in child.names)
            elif isinstance(child, ast.ImportFrom) and child.level == 0 and child.module:
                names.add(child.module.split(".")[0])
            visit(child)

    visit(tree)
    return names


def importOffences(path: Path, allowed: set[str]) -> list[str]:
    return sorted(n for n in fileScopeImports(path) - allowed if n not in STDLIB and n != "__future__")


def cmakeList(cmake: Path, variable: str, moduleName: str) -> list[str]:
    """Entries of ``set(<variable> ...)`` in a CMakeLists.txt, with ${MODULE_NAME} substituted."""
    text = re.sub(r"#.*", "", cmake.read_text())
    match = re.search(rf"set\(\s*{variable}\s+(.*?)\)", text, re.S)
    if match is None:
        return []
    return [e.replace("${MODULE_NAME}", moduleName) for e in match.group(1).split()]


def cmakeOffences(moduleDir: Path, moduleName: str | None = None) -> list[str]:
    """Files of the module folder missing from its CMakeLists.txt, and listed files that do not exist."""
    moduleName = moduleName or moduleDir.name
    cmake = moduleDir / "CMakeLists.txt"
    if not cmake.is_file():
        return [f"{moduleDir.name}: no CMakeLists.txt"]
    scripts = cmakeList(cmake, "MODULE_PYTHON_SCRIPTS", moduleName)
    resources = cmakeList(cmake, "MODULE_PYTHON_RESOURCES", moduleName)
    listed = {s if s.endswith(".py") else s + ".py" for s in scripts} | set(resources)
    offences = []
    for path in sorted(moduleDir.rglob("*")):
        rel = path.relative_to(moduleDir).as_posix()
        if not path.is_file() or "__pycache__" in rel or rel.startswith("Testing/") or rel == "CMakeLists.txt":
            continue
        if rel not in listed:
            offences.append(f"{moduleDir.name}/{rel} is not listed in CMakeLists.txt")
    for rel in sorted(listed):
        if not (moduleDir / rel).is_file():
            offences.append(f"{moduleDir.name}/CMakeLists.txt lists {rel}, which does not exist")
    return offences


def parameterNodeFields(path: Path) -> dict[str, set[str]]:
    """``{class name: annotated field names}`` of the @parameterNodeWrapper classes of a module file."""
    tree = ast.parse(path.read_text())
    out = {}
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and any(
                (isinstance(d, ast.Name) and d.id == "parameterNodeWrapper") for d in node.decorator_list):
            out[node.name] = {s.target.id for s in node.body if isinstance(s, ast.AnnAssign)
                              and isinstance(s.target, ast.Name)}
    return out


#: Widgets parameterNodeWrapper.connectGui binds to each kind of field (Slicer developer guide, "GUI creation").
WIDGETS_FOR = {
    "bool": {"QCheckBox", "QPushButton", "ctkCheckBox"},
    "int": {"QSpinBox", "QSlider", "ctkSliderWidget"},
    "float": {"QDoubleSpinBox", "ctkDoubleSpinBox", "ctkSliderWidget"},
    "str": {"QLineEdit", "QComboBox"},
    "path": {"ctkPathLineEdit"},
    "enum": {"QComboBox"},
    "node": {"qMRMLNodeComboBox", "qMRMLSubjectHierarchyComboBox"},
}


def parameterNodeKinds(path: Path) -> dict[str, tuple[str, str]]:
    """``{field: (kind, detail)}`` of the module's parameter node: kind is a key of WIDGETS_FOR; detail the
    MRML class of a node field."""
    tree = ast.parse(path.read_text())
    enums = {n.name for n in tree.body if isinstance(n, ast.ClassDef)
             and any(ast.unparse(b).endswith("Enum") for b in n.bases)}
    kinds = {}
    for node in tree.body:
        if not (isinstance(node, ast.ClassDef) and any(
                isinstance(d, ast.Name) and d.id == "parameterNodeWrapper" for d in node.decorator_list)):
            continue
        for statement in node.body:
            if not isinstance(statement, ast.AnnAssign):
                continue
            annotation = statement.annotation
            if isinstance(annotation, ast.Subscript) and ast.unparse(annotation.value) == "Annotated":
                annotation = annotation.slice.elts[0]  # type: ignore[attr-defined]
            text = ast.unparse(annotation)
            if text.startswith("vtkMRML") or text.startswith("slicer.vtkMRML"):
                kinds[statement.target.id] = ("node", text.split(".")[-1])  # type: ignore[union-attr]
            elif text in ("pathlib.Path | None", "Path | None", "Optional[pathlib.Path]", "Optional[Path]"):
                kinds[statement.target.id] = ("path", "")  # type: ignore[union-attr]
            elif text in ("pathlib.Path", "Path"):
                kinds[statement.target.id] = ("bare path", "")  # type: ignore[union-attr]
            elif text in enums:
                kinds[statement.target.id] = ("enum", text)  # type: ignore[union-attr]
            else:
                kinds[statement.target.id] = (text, "")  # type: ignore[union-attr]
    return kinds


def widgetTypeOffences(uiPath: Path, kinds: dict[str, tuple[str, str]]) -> list[str]:
    """Bindings whose widget cannot hold the field's type (e.g. an Enum on a QLineEdit, a segmentation field on
    a combo box listing only volumes)."""
    offences = []
    for widget in ET.parse(uiPath).getroot().iter("widget"):
        props = {p.get("name"): p for p in widget.findall("property")}
        if "SlicerParameterName" not in props:
            continue
        field = props["SlicerParameterName"].findtext("string")
        if field not in kinds:
            continue
        kind, detail = kinds[field]
        if widget.get("class") not in WIDGETS_FOR.get(kind, set()):
            offences.append(f"{uiPath.name}: '{field}' ({kind}) is bound to a {widget.get('class')}")
        if kind == "node":
            types = [s.text for s in props["nodeTypes"].iter("string")] if "nodeTypes" in props else []
            if types != [detail]:
                offences.append(f"{uiPath.name}: '{field}' is a {detail} but its combo box lists {types}")
    return offences


def uiOffences(uiPath: Path, fields: set[str]) -> list[str]:
    """Problems of a Qt Designer file: not well-formed, not a <ui>, or bindings that do not match ``fields``."""
    try:
        root = ET.parse(uiPath).getroot()
    except ET.ParseError as exc:
        return [f"{uiPath.name} is not well-formed XML: {exc}"]
    if root.tag != "ui" or root.find("widget") is None:
        return [f"{uiPath.name} is not a Qt Designer form (<ui> with a top-level <widget>)"]
    bound = {}
    for widget in root.iter("widget"):
        for prop in widget.findall("property"):
            if prop.get("name") == "SlicerParameterName":
                bound[prop.findtext("string")] = widget.get("name")
    offences = [f"{uiPath.name}: widget '{w}' binds '{f}', which is not a parameter-node field"
                for f, w in bound.items() if f not in fields]
    offences += [f"{uiPath.name}: parameter-node field '{f}' has no widget with SlicerParameterName"
                 for f in sorted(fields - set(bound))]
    return offences


def uiWidgetNames(uiPath: Path) -> set[str]:
    return {w.get("name") for w in ET.parse(uiPath).getroot().iter("widget")}


def normalisedName(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def versionTuple(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", text))


def requirementsOffences(path: Path) -> list[str]:
    """Lines that are not ``name>=floor``, name Slicer's infrastructure, or ask more than Slicer 5.12 bundles."""
    offences = []
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        name = normalisedName(re.split(r"[<>=!~\[ ;]", line, maxsplit=1)[0])
        if not re.fullmatch(r"[A-Za-z0-9._-]+>=[0-9][0-9A-Za-z.]*", line):
            offences.append(f"'{line}' is not 'name>=version'")
        if name in SLICER_INFRASTRUCTURE:
            offences.append(f"'{name}' is Slicer's own")
        floor = line.partition(">=")[2]
        if name in SLICER_5_12_BUNDLES and floor and versionTuple(floor) > versionTuple(SLICER_5_12_BUNDLES[name]):
            offences.append(f"'{line}' asks more than Slicer 5.12 bundles ({SLICER_5_12_BUNDLES[name]})")
    return offences


def requirementFloors(lines: list[str]) -> dict[str, str]:
    return {normalisedName(line.partition(">=")[0]): line.partition(">=")[2]
            for line in (raw.split("#", 1)[0].strip() for raw in lines) if line}


def pyprojectDependencies() -> dict[str, str]:
    import tomllib

    with open(ROOT / "pyproject.toml", "rb") as stream:
        return requirementFloors(tomllib.load(stream)["project"]["dependencies"])


# ---------------------------------------------------------------------------------------------- CMake install paths


def cmakeVariables(text: str, moduleDir: Path) -> dict[str, list[str]]:
    variables: dict[str, list[str]] = {"CMAKE_CURRENT_SOURCE_DIR": [str(moduleDir)]}
    for name, body in re.findall(r"\bset\(\s*(\w+)\s+(.*?)\)", text, re.S):
        variables[name] = [expand(v, variables) for v in body.replace('"', " ").split()]
    return variables


def expand(value: str, variables: dict[str, list[str]]) -> str:
    return re.sub(r"\$\{(\w+)\}", lambda m: " ".join(variables.get(m.group(1), [m.group(0)])), value)


def macroCalls(text: str, macro: str) -> list[str]:
    return re.findall(rf"\b{macro}\s*\((.*?)\n\s*\)", text, re.S)


def macroArguments(body: str, variables: dict[str, list[str]], keywords: set[str]) -> dict[str, list[str]]:
    arguments: dict[str, list[str]] = {}
    current = None
    for token in expand(body.replace('"', " "), variables).split():
        if token in keywords:
            current = token
            arguments.setdefault(token, [])
        elif current is not None:
            arguments[current].append(token)
    return arguments


#: Where Slicer puts scripted modules (CMake ${Slicer_QTSCRIPTEDMODULES_LIB_DIR}); paths below are relative to it.
SCRIPTED = "${Slicer_QTSCRIPTEDMODULES_LIB_DIR}"


def installedFiles(root: Path) -> list[tuple[str, str]]:
    """``[(installed path relative to the scripted-modules folder, source file)]`` of every Python script and resource
    of the CMakeLists.txt files under ``root``, read as Slicer's macros place them:

    - ``slicerMacroBuildScriptedModule`` (Slicer v5.12.0 CMake/SlicerMacroBuildScriptedModule.cmake) copies SCRIPTS
      and RESOURCES into the scripted-modules folder itself, or into a sub-folder named after the source folder with
      ``WITH_SUBDIR``;
    - ``ctkMacroCompilePythonScript`` (CTK CMake/ctkMacroCompilePythonScript.cmake) copies each file to
      ``DESTINATION_DIR/<file as listed>``.
    """
    files = []
    for cmake in sorted(root.rglob("CMakeLists.txt")):
        text = re.sub(r"#.*", "", cmake.read_text(encoding="utf-8"))
        folder = cmake.parent
        variables = cmakeVariables(text, folder)
        for body in macroCalls(text, "slicerMacroBuildScriptedModule"):
            args = macroArguments(body, variables, {"NAME", "SCRIPTS", "RESOURCES", "WITH_SUBDIR", "WITH_GENERIC_TESTS"})
            base = f"{folder.name}/" if "WITH_SUBDIR" in args else ""
            for script in args.get("SCRIPTS", []):
                files.append((base + (script if script.endswith(".py") else script + ".py"), str(folder / script)))
            files += [(base + r, str(folder / r)) for r in args.get("RESOURCES", [])]
        for body in macroCalls(text, "ctkMacroCompilePythonScript"):
            args = macroArguments(body, variables, {"TARGET_NAME", "SCRIPTS", "RESOURCES", "DESTINATION_DIR",
                                                    "INSTALL_DIR", "NO_INSTALL_SUBDIR", "SOURCE_DIR"})
            destination = " ".join(args["DESTINATION_DIR"])
            assert SCRIPTED in destination, f"{cmake}: DESTINATION_DIR {destination} is not under {SCRIPTED}"
            base = destination.split(SCRIPTED, 1)[1].strip("/")
            base = base + "/" if base else ""
            files += [(base + f, str(folder / f)) for f in args.get("SCRIPTS", []) + args.get("RESOURCES", [])]
    return files


def installCollisions(root: Path) -> list[str]:
    sources: dict[str, set[str]] = {}
    for installed, source in installedFiles(root):
        sources.setdefault(installed, set()).add(source)
    return [f"{path} <- {sorted(s)}" for path, s in sorted(sources.items()) if len(s) > 1]


def layoutOffences(path: Path) -> list[str]:
    """Template order and metadata of a visible module file."""
    name = path.stem
    tree = ast.parse(path.read_text())
    classes = [n.name for n in tree.body if isinstance(n, ast.ClassDef)]
    expected = [name, f"{name}ParameterNode", f"{name}Widget", f"{name}Logic", f"{name}Test"]
    present = [c for c in classes if c in expected]
    offences = []
    if present != [c for c in expected if c in classes] or set(expected) - set(classes):
        offences.append(f"{path.name}: classes {present} are not {expected} in this order")
    text = path.read_text()
    if '"Nuclear Medicine"' not in text:
        offences.append(f"{path.name}: category is not 'Nuclear Medicine'")
    for attribute in ("title", "helpText", "acknowledgementText"):
        if not re.search(rf"self\.parent\.{attribute}\s*=\s*_\(", text):
            offences.append(f"{path.name}: parent.{attribute} is not translated with _()")
    if "href=" not in text:
        offences.append(f"{path.name}: the help text has no link to the documentation")
    if "tryWithErrorDisplay" not in text or "waitCursor=True" not in text:
        offences.append(f"{path.name}: the Widget does not call the Logic in tryWithErrorDisplay(waitCursor=True)")
    return offences


# ---------------------------------------------------------------------------------------------- the repo


VISIBLE = [p for p in scriptedModules() if p.parent.parent == MODULES_DIR]


def test_the_modules_exist() -> None:
    assert {p.stem for p in VISIBLE} >= {"TheraTwinKinetics", "TheraTwinDosimetry", "TheraTwinTwin",
                                         "TheraTwinExport"}
    assert (LIB / "__init__.py").is_file()


@pytest.mark.parametrize("path", scriptedModules(), ids=lambda p: p.name)
def test_module_file_scope_imports(path: Path) -> None:
    assert importOffences(path, ALLOWED_IN_MODULES) == []


@pytest.mark.parametrize("path", sorted(LIB.glob("*.py")), ids=lambda p: p.name)
def test_theratwinlib_is_qt_free(path: Path) -> None:
    assert importOffences(path, ALLOWED_IN_LIB) == []


@pytest.mark.parametrize("moduleDir", [p.parent for p in VISIBLE] + [LIB], ids=lambda p: p.name)
def test_cmake_lists_every_file(moduleDir: Path) -> None:
    cmake = moduleDir / "CMakeLists.txt"
    assert cmakeOffences(moduleDir) == []
    text = cmake.read_text()
    if moduleDir != LIB:
        assert "slicerMacroBuildScriptedModule" in text
        assert "slicer_add_python_unittest(SCRIPT ${MODULE_NAME}.py)" in text
    assert moduleDir.name in (MODULES_DIR / "CMakeLists.txt").read_text()


def test_extension_cmake_lists_every_file() -> None:
    text = re.sub(r"#.*", "", (EXTENSION_DIR / "CMakeLists.txt").read_text())
    for path in EXTENSION_DIR.rglob("*"):
        rel = path.relative_to(EXTENSION_DIR).as_posix()
        if path.is_file() and "__pycache__" not in rel and rel not in ("CMakeLists.txt", "TheraTwin.json",
                                                                       "TheraTwin.png") and not rel.startswith("Screenshots/"):
            assert rel in text, f"TheraTwinExtension/{rel} is not in TheraTwinExtension/CMakeLists.txt"
    for module in ("TheraTwinSampleData", "TheraTwinSelfTest"):
        assert f"NAME {module}" in text


@pytest.mark.parametrize("path", VISIBLE, ids=lambda p: p.name)
def test_ui_binds_exactly_the_parameter_node(path: Path) -> None:
    ui = path.parent / "Resources" / "UI" / f"{path.stem}.ui"
    fields = parameterNodeFields(path)
    assert list(fields) == [f"{path.stem}ParameterNode"], "one @parameterNodeWrapper class per module"
    assert uiOffences(ui, fields[f"{path.stem}ParameterNode"]) == []
    assert widgetTypeOffences(ui, parameterNodeKinds(path)) == []
    # every self.ui.<name> the Widget uses exists in the form
    used = set(re.findall(r"self\.ui\.(\w+)", path.read_text()))
    assert used <= uiWidgetNames(ui), f"{path.name} uses widgets not in the .ui: {used - uiWidgetNames(ui)}"


@pytest.mark.parametrize("path", VISIBLE, ids=lambda p: p.name)
def test_template_layout(path: Path) -> None:
    assert layoutOffences(path) == []


def test_one_requirements_list_matching_pyproject() -> None:
    """TheraTwinLib/requirements.txt is the only list, and it is pyproject's core dependencies with the same floors
    (less what Slicer does not need, with the one file that imports it)."""
    assert requirementsOffences(LIB_REQUIREMENTS) == []
    lib = requirementFloors(LIB_REQUIREMENTS.read_text(encoding="utf-8").splitlines())
    core = pyprojectDependencies()
    assert lib == {name: floor for name, floor in core.items() if name not in NOT_NEEDED_IN_SLICER}
    for name, onlyUser in NOT_NEEDED_IN_SLICER.items():
        users = sorted(p.relative_to(ROOT / "Logic" / "theratwin").as_posix()
                       for p in (ROOT / "Logic" / "theratwin").rglob("*.py") if name in _allImports(p))
        assert users == [onlyUser], f"{name} is imported by {users}, so Slicer needs it too"
    others = sorted(p.relative_to(ROOT).as_posix() for p in [*MODULES_DIR.rglob("requirements*.txt"),
                                                              *EXTENSION_DIR.rglob("requirements*.txt")])
    assert others == ["Modules/TheraTwinLib/requirements.txt"]


def _allImports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_no_two_cmake_targets_install_a_file_to_the_same_path() -> None:
    files = installedFiles(ROOT)
    assert ("TheraTwinLib/requirements.txt", str(LIB_REQUIREMENTS)) in files
    assert ("TheraTwinKinetics.py", str(MODULES_DIR / "TheraTwinKinetics" / "TheraTwinKinetics.py")) in files
    assert ("theratwin/dicom/read.py", str(ROOT / "Logic" / "theratwin" / "dicom" / "read.py")) in files
    assert installCollisions(ROOT) == []


def test_dependencies_are_installed_through_slicer_packaging_only() -> None:
    """One code path in the application: slicer.packaging imported explicitly (never looked up on the slicer module,
    whose attribute exists only if something imported it first), no slicer.util.pip_install."""
    text = (LIB / "Dependencies.py").read_text(encoding="utf-8")
    assert "import slicer.packaging" in text and "pip_ensure(" in text and "skip_in_testing=False" in text
    for path in [*MODULES_DIR.rglob("*.py"), *EXTENSION_DIR.rglob("*.py")]:
        code = path.read_text(encoding="utf-8")
        assert "pip_install" not in code and 'getattr(slicer, "packaging"' not in code, path


@pytest.mark.parametrize("path", VISIBLE, ids=lambda p: p.name)
def test_path_fields_can_be_unset(path: Path) -> None:
    """A bare ``pathlib.Path`` field is never empty (its unset value is Path(".")): folders and files are
    ``pathlib.Path | None``, shown by TheraTwinLib's connector, which the Widget registers before connectGui."""
    kinds = parameterNodeKinds(path)
    assert not [f for f, (kind, _) in kinds.items() if kind == "bare path"]
    if any(kind == "path" for kind, _ in kinds.values()):
        text = path.read_text(encoding="utf-8")
        assert text.index("registerPathParameterConnector()") < text.index("self.initializeParameterNode()")


@pytest.mark.parametrize("path", VISIBLE, ids=lambda p: p.name)
def test_no_endpoint_or_credential_in_the_parameter_node(path: Path) -> None:
    """The scene may be shared: endpoints live in application settings, credentials in the environment."""
    for fields in parameterNodeFields(path).values():
        assert not [f for f in fields if re.search(r"url|password|token|user|secret|credential", f, re.I)]


# ---------------------------------------------------------------------------------------------- the checkers catch faults


def test_checkers_catch_a_bad_import(tmp_path: Path) -> None:
    bad = tmp_path / "Bad.py"
    bad.write_text("import os\nimport slicer\ntry:\n    import qt\nexcept ImportError:\n    import theratwin\n"
                   "class A:\n    import highdicom\n"
                   "def f():\n    import pydicom\n")
    assert importOffences(bad, ALLOWED_IN_MODULES) == ["highdicom", "theratwin"]
    assert importOffences(bad, ALLOWED_IN_LIB) == ["highdicom", "qt", "theratwin"]


def test_checkers_catch_cmake_omissions(tmp_path: Path) -> None:
    module = tmp_path / "Good"
    (module / "Resources" / "UI").mkdir(parents=True)
    (module / "Good.py").write_text("")
    (module / "Helper.py").write_text("")
    (module / "Resources" / "UI" / "Good.ui").write_text("<ui/>")
    (module / "CMakeLists.txt").write_text(
        "set(MODULE_NAME Good)\nset(MODULE_PYTHON_SCRIPTS\n  ${MODULE_NAME}.py\n  Gone.py\n  )\n"
        "set(MODULE_PYTHON_RESOURCES\n  # Resources/UI/${MODULE_NAME}.ui\n  )\n")
    assert cmakeOffences(module) == [
        "Good/Helper.py is not listed in CMakeLists.txt",
        "Good/Resources/UI/Good.ui is not listed in CMakeLists.txt",
        "Good/CMakeLists.txt lists Gone.py, which does not exist",
    ]


def test_checkers_catch_bad_ui(tmp_path: Path) -> None:
    broken = tmp_path / "Broken.ui"
    broken.write_text("<ui><widget class='QWidget' name='w'></ui>")
    assert "not well-formed" in uiOffences(broken, set())[0]
    wrong = tmp_path / "Wrong.ui"
    wrong.write_text("<ui version='4.0'><widget class='qMRMLWidget' name='Wrong'>"
                     "<widget class='QCheckBox' name='box'><property name='SlicerParameterName' stdset='0'>"
                     "<string>invert</string></property></widget></widget></ui>")
    assert uiOffences(wrong, {"invert"}) == []
    assert uiOffences(wrong, {"inverted", "threshold"}) == [
        "Wrong.ui: widget 'box' binds 'invert', which is not a parameter-node field",
        "Wrong.ui: parameter-node field 'inverted' has no widget with SlicerParameterName",
        "Wrong.ui: parameter-node field 'threshold' has no widget with SlicerParameterName",
    ]


def test_checkers_catch_pins_infrastructure_and_floors_above_slicer(tmp_path: Path) -> None:
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("highdicom>=0.27\nnumpy>=3.0\nfhir.resources==8.0\nvtk>=9\nmatplotlib\n", encoding="utf-8")
    assert requirementsOffences(requirements) == ["'numpy>=3.0' asks more than Slicer 5.12 bundles (2.4.6)",
                                                  "'fhir.resources==8.0' is not 'name>=version'",
                                                  "'vtk' is Slicer's own", "'matplotlib' is not 'name>=version'"]


def test_checkers_catch_two_modules_installing_the_same_resource(tmp_path: Path) -> None:
    """The fault of the former layout: every module listed Resources/requirements.txt without WITH_SUBDIR."""
    for name in ("A", "B"):
        module = tmp_path / name
        (module / "Resources").mkdir(parents=True)
        (module / "CMakeLists.txt").write_text(
            f"set(MODULE_NAME {name})\nset(MODULE_PYTHON_SCRIPTS\n  ${{MODULE_NAME}}.py\n  )\n"
            "set(MODULE_PYTHON_RESOURCES\n  Resources/requirements.txt\n  )\n"
            "slicerMacroBuildScriptedModule(\n  NAME ${MODULE_NAME}\n  SCRIPTS ${MODULE_PYTHON_SCRIPTS}\n"
            "  RESOURCES ${MODULE_PYTHON_RESOURCES}\n  )\n",
            encoding="utf-8")
    collisions = installCollisions(tmp_path)
    assert len(collisions) == 1 and collisions[0].startswith("Resources/requirements.txt <- ")
    # with WITH_SUBDIR each module's resources go to a folder of their own
    cmake = tmp_path / "B" / "CMakeLists.txt"
    cmake.write_text(cmake.read_text(encoding="utf-8").replace("RESOURCES ${MODULE_PYTHON_RESOURCES}",
                                                               "RESOURCES ${MODULE_PYTHON_RESOURCES}\n  WITH_SUBDIR"),
                     encoding="utf-8")
    assert installCollisions(tmp_path) == []
    assert ("B/Resources/requirements.txt", str(tmp_path / "B" / "Resources" / "requirements.txt")) in \
        installedFiles(tmp_path)


def test_checkers_catch_a_widget_of_the_wrong_type(tmp_path: Path) -> None:
    module = tmp_path / "M.py"
    module.write_text("import enum\nimport pathlib\nfrom typing import Annotated\n"
                      "class Mode(enum.Enum):\n    A = 'a'\n"
                      "@parameterNodeWrapper\nclass MParameterNode:\n    mode: Mode\n"
                      "    folder: pathlib.Path | None\n    level: Annotated[float, WithinRange(0, 1)] = 0.5\n"
                      "    seg: vtkMRMLSegmentationNode\n    old: pathlib.Path\n")
    kinds = parameterNodeKinds(module)
    assert kinds == {"mode": ("enum", "Mode"), "folder": ("path", ""), "level": ("float", ""),
                     "seg": ("node", "vtkMRMLSegmentationNode"), "old": ("bare path", "")}
    ui = tmp_path / "M.ui"
    ui.write_text(
        "<ui version='4.0'><widget class='qMRMLWidget' name='M'>"
        "<widget class='QLineEdit' name='a'><property name='SlicerParameterName' stdset='0'><string>mode</string>"
        "</property></widget>"
        "<widget class='ctkPathLineEdit' name='b'><property name='SlicerParameterName' stdset='0'>"
        "<string>folder</string></property></widget>"
        "<widget class='ctkSliderWidget' name='c'><property name='SlicerParameterName' stdset='0'>"
        "<string>level</string></property></widget>"
        "<widget class='qMRMLNodeComboBox' name='d'><property name='nodeTypes'><stringlist>"
        "<string>vtkMRMLScalarVolumeNode</string></stringlist></property>"
        "<property name='SlicerParameterName' stdset='0'><string>seg</string></property></widget>"
        "</widget></ui>")
    assert widgetTypeOffences(ui, kinds) == [
        "M.ui: 'mode' (enum) is bound to a QLineEdit",
        "M.ui: 'seg' is a vtkMRMLSegmentationNode but its combo box lists ['vtkMRMLScalarVolumeNode']",
    ]


# ---------------------------------------------------------------------------------------------- minimum Slicer version


def minimumSlicerVersion() -> str:
    """MINIMUM_SLICER_VERSION of TheraTwinLib/Compatibility.py, as "major.minor"."""
    tree = ast.parse((LIB / "Compatibility.py").read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "MINIMUM_SLICER_VERSION" for t in node.targets):
            return ".".join(str(v) for v in ast.literal_eval(node.value))
    raise AssertionError("no MINIMUM_SLICER_VERSION in TheraTwinLib/Compatibility.py")


def test_minimum_slicer_version_is_declared_in_readme_and_cmake() -> None:
    minimum = minimumSlicerVersion()
    assert minimum == "5.12"
    cmake = (ROOT / "CMakeLists.txt").read_text(encoding="utf-8")
    assert f'set(TheraTwin_MINIMUM_SLICER_VERSION "{minimum}")' in cmake
    assert "find_package(Slicer ${TheraTwin_MINIMUM_SLICER_VERSION} REQUIRED)" in cmake
    for readme in (ROOT / "README.md", MODULES_DIR / "README.md"):
        assert f"3D Slicer {minimum} or later" in readme.read_text(encoding="utf-8"), readme


def codeBeforeTheVersionCheck() -> list[Path]:
    """Files Python compiles before TheraTwinLib can refuse an old Slicer: each module file (whole file: it is
    compiled before it runs), TheraTwinLib/__init__.py and Compatibility.py."""
    return scriptedModules() + [LIB / "__init__.py", LIB / "Compatibility.py"]


@pytest.mark.parametrize("path", codeBeforeTheVersionCheck(), ids=lambda p: p.name)
def test_code_before_the_version_check_compiles_on_python_3_9(path: Path) -> None:
    """Slicer 5.8 has Python 3.9: these files must compile there so that its user reads the version message."""
    ast.parse(path.read_text(encoding="utf-8"), filename=str(path), feature_version=(3, 9))


@pytest.mark.parametrize("path", scriptedModules(), ids=lambda p: p.name)
def test_module_files_import_theratwinlib_before_defining_anything(path: Path) -> None:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    firstDefinition = next(i for i, n in enumerate(tree.body) if isinstance(n, (ast.ClassDef, ast.FunctionDef)))
    before = tree.body[:firstDefinition]
    assert any(isinstance(n, ast.Import) and any(a.name == "TheraTwinLib" for a in n.names) for n in before)


def test_theratwinlib_checks_the_version_first() -> None:
    tree = ast.parse((LIB / "__init__.py").read_text(encoding="utf-8"))
    body = [n for n in tree.body if not (isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant))]
    assert isinstance(body[0], ast.ImportFrom) and body[0].module == "Compatibility" and body[0].level == 1
    assert ast.unparse(body[1]) == "checkSlicerVersion()"


def test_the_python_3_9_check_catches_newer_syntax(tmp_path: Path) -> None:
    bad = tmp_path / "Bad.py"
    bad.write_text("match 1:\n    case 1:\n        pass\n", encoding="utf-8")
    with pytest.raises(SyntaxError):
        test_code_before_the_version_check_compiles_on_python_3_9(bad)


# ---------------------------------------------------------------------------------------------- robust panels


def unexplainedActions(path: Path) -> list[str]:
    """``with tryWithErrorDisplay(...)`` blocks that do not also restate foreign errors (TheraTwinLib.explainedErrors)."""
    offences = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.With):
            items = [ast.unparse(item.context_expr) for item in node.items]
            if any("tryWithErrorDisplay" in item for item in items) and "TheraTwinLib.explainedErrors()" not in items:
                offences.append(f"{path.name}:{node.lineno}")
    return offences


@pytest.mark.parametrize("path", VISIBLE, ids=lambda p: p.name)
def test_every_panel_action_restates_foreign_errors(path: Path) -> None:
    assert unexplainedActions(path) == []


def test_kinetics_panel_examines_dicom_volumes_without_raising() -> None:
    """initializeParameterNode (setup and every enter) reads DICOM headers only through the guarded method."""
    text = (MODULES_DIR / "TheraTwinKinetics" / "TheraTwinKinetics.py").read_text(encoding="utf-8")
    assert text.count("annotateSceneFromDicom(") == 1
    guarded = text[text.index("def _annotateDicomVolumes"):text.index("def setParameterNode")]
    assert "annotateSceneFromDicom(" in guarded and "except Exception" in guarded


def test_checker_catches_an_unexplained_action(tmp_path: Path) -> None:
    bad = tmp_path / "M.py"
    bad.write_text("def onApply(self):\n    with slicer.util.tryWithErrorDisplay('x', waitCursor=True):\n"
                   "        pass\n", encoding="utf-8")
    assert unexplainedActions(bad) == ["M.py:2"]


# ---------------------------------------------------------------------------------------------- smoke test


def test_the_smoke_test_is_documented_and_registered() -> None:
    script = ROOT / "Testing" / "slicer" / "SlicerSmokeTest.py"
    assert script.is_file()
    command = "Slicer --no-main-window --testing --python-script Testing/slicer/SlicerSmokeTest.py"
    assert command in (MODULES_DIR / "README.md").read_text(encoding="utf-8")
    assert command in script.read_text(encoding="utf-8")
    cmake = re.sub(r"#.*", "", (EXTENSION_DIR / "CMakeLists.txt").read_text(encoding="utf-8"))
    assert re.search(r"slicer_add_python_test\(\s*SCRIPT \$\{PROJECT_SOURCE_DIR\}/Testing/slicer/SlicerSmokeTest\.py"
                     r"\s+SLICER_ARGS --no-main-window\s+TESTNAME_PREFIX TheraTwin_\s*\)", cmake)
    # it runs in Slicer's Python: ASCII (CTK's executeFile opens it without an encoding) and no qt at file scope
    assert script.read_bytes().isascii()
    assert importOffences(script, {"slicer"}) == []
