"""The package's layers: a module imports only from the layers below its
own, or from its own package. core < gateways, node, fakes < work < api <
the entry points at the top (cli, service, ...)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "dispatcher"
RANK = {"core": 0, "gateways": 1, "node": 1, "fakes": 1, "work": 2, "api": 3}
TOP = 4  # modules directly in dispatcher/


def layer(module: str) -> tuple[str, int]:
    """(package, rank) of a dotted dispatcher module name."""
    parts = module.split(".")
    if len(parts) > 1 and parts[1] in RANK:
        return parts[1], RANK[parts[1]]
    return "", TOP


def imports_of(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "dispatcher":
                found += [f"dispatcher.{a.name}" for a in node.names]
            elif node.module.startswith("dispatcher."):
                found.append(node.module)
        elif isinstance(node, ast.Import):
            found += [a.name for a in node.names if a.name.startswith("dispatcher.")]
    return found


def test_imports_point_down() -> None:
    wrong = []
    for path in sorted(PACKAGE.rglob("*.py")):
        module = "dispatcher." + ".".join(path.relative_to(PACKAGE).with_suffix("").parts)
        package, rank = layer(module)
        for imported in imports_of(path):
            their_package, their_rank = layer(imported)
            if their_rank < rank or their_package == package:
                continue
            wrong.append(f"{module} imports {imported}")
    assert not wrong, "imports that do not point down:\n" + "\n".join(wrong)


def test_every_layer_is_a_package_with_modules() -> None:
    for name in RANK:
        assert (PACKAGE / name / "__init__.py").is_file(), name
        assert len(list((PACKAGE / name).glob("*.py"))) > 1, name
