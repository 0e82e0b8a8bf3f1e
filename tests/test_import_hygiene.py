"""Importing framepack_core stays UI-free and never touches CUDA; the CLI module itself imports nothing heavy.

Each check runs in a fresh interpreter, since this pytest process has long since imported everything.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]

# Imports every module of the package (found on disk, so new modules are covered too) except __main__, which
# would run the CLI. Prints the module names it imported.
IMPORT_ALL = """
import importlib, pkgutil
import framepack_core
names = sorted(m.name for m in pkgutil.walk_packages(framepack_core.__path__, "framepack_core.") if not m.name.endswith("__main__"))
for name in names:
    importlib.import_module(name)
print("imported:", " ".join(names))
"""


def _run_python(code: str) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=REPO_ROOT, capture_output=True,
                            text=True, timeout=120, check=False)
    assert result.returncode == 0, f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    return result


def _imported(result: subprocess.CompletedProcess) -> set[str]:
    line = next(line for line in result.stdout.splitlines() if line.startswith("imported:"))
    return set(line.split()[1:])


def test_importing_every_module_does_not_import_gradio():
    result = _run_python(IMPORT_ALL + """
import sys
loaded = sorted(name for name in sys.modules if name == "gradio" or name.startswith(("gradio.", "gradio_client")))
assert not loaded, f"framepack_core pulled in the UI library: {loaded}"
""")
    # Guard against the discovery silently finding nothing.
    assert {"framepack_core.cli.main", "framepack_core.pipeline.engine", "framepack_core.models.store",
            "framepack_core.models.loading", "framepack_core.models.tiny", "framepack_core.media.video_io",
            "framepack_core.sampling.teacache", "framepack_core.models.devices"} <= _imported(result)


def test_importing_every_module_and_building_the_cli_parser_never_touches_cuda():
    result = _run_python("""
import torch

calls = []  # also recorded, in case some library swallows the exception

def _forbidden(name):
    def call(*args, **kwargs):
        calls.append(name)
        raise AssertionError(f"torch.cuda.{name} was called while importing framepack_core")
    return call

for name in ("is_available", "current_device", "device_count", "mem_get_info", "init", "_lazy_init"):
    setattr(torch.cuda, name, _forbidden(name))
""" + IMPORT_ALL + """
from framepack_core.cli.main import build_parser
from framepack_core.models.devices import resolve_device_config

args = build_parser().parse_args(["generate", "--image", "x.png", "--device", "cpu"])
assert args.device == "cpu" and args.command == "generate"
assert resolve_device_config("cpu").device.type == "cpu"  # an explicit CPU asks nothing of CUDA either
assert not calls, f"CUDA was touched: {calls}"
""")
    assert "framepack_core.pipeline.engine" in _imported(result)


def test_the_cli_module_imports_no_heavy_library_so_help_is_instant():
    result = _run_python("""
import sys
import framepack_core.cli.main
from framepack_core.cli.main import build_parser
build_parser()
heavy = sorted({name.split(".")[0] for name in sys.modules} & {"torch", "numpy", "PIL", "av", "transformers",
                                                              "diffusers", "gradio", "huggingface_hub"})
print("heavy:", heavy)
""")
    assert "heavy: []" in result.stdout


def _project_imports() -> dict[str, set[str]]:
    """Module -> the project modules it imports anywhere in its text (module level, inside functions, or under
    TYPE_CHECKING: an import moved into a function to dodge a loop is still a loop)."""
    import ast

    modules = {}
    for package in ("framepack_core", "app"):
        for path in (REPO_ROOT / package).rglob("*.py"):
            name = ".".join(path.relative_to(REPO_ROOT).with_suffix("").parts).removesuffix(".__init__")
            modules[name] = path
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                base = node.module if not node.level else ".".join(name.split(".")[:-node.level] + [node.module])
                targets = [base, *(f"{base}.{alias.name}" for alias in node.names)]
            else:
                continue
            graph[name] |= {target for target in targets if target in modules and target != name}
    return graph


def test_no_two_project_modules_import_each_other_even_through_a_chain():
    from graphlib import CycleError, TopologicalSorter

    graph = _project_imports()
    assert len(graph) > 50, "the walk found the modules"
    try:
        tuple(TopologicalSorter(graph).static_order())
    except CycleError as error:
        raise AssertionError(f"import loop: {' -> '.join(error.args[1])}") from None


def test_the_core_never_imports_the_app_or_gradio_in_any_module():
    import ast

    for path in (REPO_ROOT / "framepack_core").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = ([alias.name for alias in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            for imported in names:
                assert imported.split(".")[0] not in ("app", "gradio", "gradio_client"), (path, imported)


def test_no_module_of_the_engine_or_the_app_is_over_500_lines():
    too_long = {}
    for package in ("framepack_core", "app"):
        for path in sorted((REPO_ROOT / package).rglob("*.py")):
            lines = len(path.read_text(encoding="utf-8").splitlines())
            if lines > 500:
                too_long[str(path.relative_to(REPO_ROOT))] = lines
    assert not too_long, f"split these modules by what they do: {too_long}"


def test_every_subpackage_says_in_one_line_what_it_is_for():
    for init in sorted([*(REPO_ROOT / "framepack_core").glob("*/__init__.py"), *(REPO_ROOT / "app").glob("*/__init__.py")]):
        docstring = init.read_text(encoding="utf-8").strip()
        assert docstring.startswith('"""') and len(docstring) > 20, f"{init.relative_to(REPO_ROOT)} needs a docstring"
