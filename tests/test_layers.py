"""The package's imports run down the layers only, and no module imports itself back in a cycle.

Layers, lowest first: core (errors, atomic, registry, config, losses) <- data, models <- methods <-
engine <- inference, evaluation, planning <- mining, reporting <- demo <- cli. Every import counts, including
those inside functions.
"""
from __future__ import annotations

import ast
from pathlib import Path

import semi3d

ROOT = Path(semi3d.__file__).parent
LAYERS = [{"errors", "atomic", "registry", "config", "losses"}, {"data", "models"}, {"methods"}, {"engine"},
          {"inference", "evaluation", "planning"}, {"mining", "reporting"}, {"demo"}, {"cli", "__main__", "__init__"}]
RANK = {name: i for i, layer in enumerate(LAYERS) for name in layer}


def _modules() -> dict[str, Path]:
    out = {}
    for f in ROOT.rglob("*.py"):
        parts = f.relative_to(ROOT.parent).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = f
    return out


def _imports(mods: dict[str, Path]) -> dict[str, set[str]]:
    edges: dict[str, set[str]] = {}
    for mod, f in mods.items():
        pkg = mod if f.name == "__init__.py" else mod.rsplit(".", 1)[0]
        targets = set()
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").startswith("semi3d")):
                base = pkg.split(".")[: len(pkg.split(".")) - node.level + 1] if node.level else []
                target = ".".join(base + ([node.module] if node.module else []))
                for alias in node.names:  # `from . import distributed` imports a module
                    sub = f"{target}.{alias.name}"
                    targets.add(sub if sub in mods else target)
            elif isinstance(node, ast.Import):
                targets |= {a.name for a in node.names if a.name.startswith("semi3d.")}
        edges[mod] = {t for t in targets if t in mods and t != mod}
    return edges


def _layer(mod: str) -> str:
    parts = mod.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def test_imports_run_down_the_layers():
    mods = _modules()
    assert set(map(_layer, mods)) <= set(RANK), "a new package needs a place in LAYERS"
    up = sorted(f"{m} -> {t}" for m, ts in _imports(mods).items() for t in ts
                if _layer(m) != "__init__" and RANK[_layer(t)] > RANK[_layer(m)])
    assert not up, "imports of a higher layer:\n" + "\n".join(up)


def test_no_module_imports_another_ones_private_names():
    """What another module needs is public: ``from .x import _helper`` is refused."""
    private = []
    for mod, f in _modules().items():
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").startswith("semi3d")):
                private += [f"{mod}: from {'.' * node.level}{node.module or ''} import {a.name}"
                            for a in node.names if a.name.startswith("_")]
    assert not private, "imports of private names:\n" + "\n".join(private)


def test_no_import_cycle_between_packages_or_modules():
    edges = _imports(_modules())
    pkg_edges: dict[str, set[str]] = {}
    for m, ts in edges.items():
        if _layer(m) != "__init__":
            pkg_edges.setdefault(_layer(m), set()).update(_layer(t) for t in ts if _layer(t) != _layer(m))
    for graph in (pkg_edges, {m: {t for t in ts if _layer(m) != "__init__"} for m, ts in edges.items()}):
        state: dict[str, int] = {}

        def visit(n, path):
            state[n] = 1
            for t in sorted(graph.get(n, ())):
                assert state.get(t) != 1, "import cycle: " + " -> ".join(path + [t])
                if t not in state:
                    visit(t, path + [t])
            state[n] = 2

        for n in sorted(graph):
            if n not in state:
                visit(n, [n])


def test_the_readme_layout_lists_every_module():
    """README's "Layout" block names every source file under its own package (it matches the tree)."""
    root = Path(__file__).resolve().parents[1]
    block = (root / "README.md").read_text().split("## Layout", 1)[1].split("```")[1]
    sections: dict[str, str] = {}
    current = None
    for line in block.splitlines():
        head = line[2:].split(" ", 1)[0] if line.startswith("  ") and not line.startswith("   ") else None
        if head:
            current = head.rstrip("/") if head.endswith("/") else ""  # top-level files: package ""
        if current is not None:
            sections[current] = sections.get(current, "") + " " + line
    src = root / "src" / "semi3d"
    missing = [str(f.relative_to(src)) for f in sorted(src.rglob("*.py"))
               if f.name not in ("__init__.py", "__main__.py") and f.parent.name != "backbones2d"
               and f.name not in sections.get("" if f.parent == src else f.parent.name, "")]
    assert not missing, f"README's Layout misses {missing}"
