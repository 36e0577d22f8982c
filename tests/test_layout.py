"""The shape of the repository: the installed package is only the codec, dependencies point one
way (cli → codec → model, entropy, container, …; tools / benchmarks / lab → the package's public
API), and no module of the package grows past what one reader holds in mind."""
import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "neuralcodec"
MAX_MODULE_LINES = 450


def _modules(folder: Path):
    return sorted(p for p in folder.rglob("*.py") if "__pycache__" not in p.parts)


def _imports(path: Path):
    """(module, names) of every import statement in ``path``, relative ones resolved to absolute
    names inside the repository."""
    tree = ast.parse(path.read_text(), str(path))
    pkg = list(path.relative_to(ROOT).with_suffix("").parts[:-1])
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                yield a.name, []
        elif isinstance(node, ast.ImportFrom):
            base = pkg[:len(pkg) - node.level + 1] if node.level else []
            mod = ".".join(base + ([node.module] if node.module else []))
            yield mod, [a.name for a in node.names]


def test_package_modules_are_small():
    long = {str(p.relative_to(ROOT)): n for p in _modules(PACKAGE)
            if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES}
    assert not long, f"modules over {MAX_MODULE_LINES} lines: {long}"


def test_package_holds_no_training_or_lab_code():
    assert not (PACKAGE / "train").exists()
    for p in _modules(PACKAGE):
        for mod, _ in _imports(p):
            top = mod.split(".")[0]
            assert top not in {"lab", "tools", "benchmarks", "tests"}, f"{p.name} imports {mod}"


@pytest.mark.parametrize("folder, others", [("tools", {"benchmarks", "lab"}),
                                            ("benchmarks", {"tools", "lab"}),
                                            ("lab", {"tools", "benchmarks"})])
def test_tools_benchmarks_and_lab_use_the_public_api_only(folder, others):
    """No folder imports another's modules, and none imports a private name of the package."""
    for p in _modules(ROOT / folder):
        for mod, names in _imports(p):
            assert mod.split(".")[0] not in others, f"{p.relative_to(ROOT)} imports {mod}"
            if mod.startswith("neuralcodec"):
                private = [n for n in names if n.startswith("_")]
                assert not private, f"{p.relative_to(ROOT)} imports private {mod}.{private}"
