"""Fails when a public name of a Titanax package has no entry in the built API reference.

Usage: ``python docs/check_public_names.py SITE_DIR`` (run by ``nox -s docs`` after
``mkdocs build``). For every package ``packages/*/src/titanax/<sub>/__init__.py`` it reads
``__all__`` (statically, nothing is imported); a name in it that is itself a module of the
package (``titanax.mesh.collectives``, ``titanax.sharding.tp_rules``) contributes its own
``__all__`` too, and so does every public plain module ``packages/*/src/titanax/<name>.py``
(``titanax.quickstart``). Each name must have an anchor ``id="<module>.<name>"`` — the heading
mkdocstrings writes for a documented object — in one of the pages under ``SITE_DIR/api/``.

It also checks that every error class defined in the packages' sources (``class ...Error``)
has its section (``### <Name>``) in ``docs/troubleshooting.md``. Exit status 1 lists every
missing name.
"""

from __future__ import annotations

import ast
import pathlib
import re
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _all_of(path: pathlib.Path) -> list[str]:
    """The string entries of the module-level ``__all__`` of the file at ``path``."""
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in tree.body:
        if isinstance(node, ast.Assign):
            targets, value = node.targets, node.value
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            targets, value = [node.target], node.value
        else:
            continue
        if any(isinstance(t, ast.Name) and t.id == "__all__" for t in targets):
            return [str(name) for name in ast.literal_eval(value)]
    raise SystemExit(f"{path}: no literal __all__")


def public_names() -> dict[str, list[str]]:
    """``{module: [names]}`` for every package, every submodule it exports, and every plain
    public module of the namespace (such as the meta-distribution's ``titanax.quickstart``)."""
    found: dict[str, list[str]] = {}
    for module_file in sorted(ROOT.glob("packages/*/src/titanax/*.py")):
        if not module_file.name.startswith("_"):
            found[f"titanax.{module_file.stem}"] = _all_of(module_file)
    for init in sorted(ROOT.glob("packages/*/src/titanax/*/__init__.py")):
        package_dir = init.parent
        module = f"titanax.{package_dir.name}"
        names = _all_of(init)
        found[module] = names
        for name in names:
            submodule = package_dir / f"{name}.py"
            if submodule.is_file():
                found[f"{module}.{name}"] = _all_of(submodule)
    return found


def documented_ids(site: pathlib.Path) -> set[str]:
    """Every ``id="..."`` of the HTML pages under ``site/api``."""
    ids: set[str] = set()
    for page in (site / "api").rglob("*.html"):
        ids.update(re.findall(r'\bid="([^"]+)"', page.read_text(encoding="utf-8")))
    return ids


def error_classes() -> list[str]:
    """Names of every ``class <Name>Error`` defined in the packages' sources."""
    names: set[str] = set()
    for source in ROOT.glob("packages/*/src/titanax/**/*.py"):
        tree = ast.parse(source.read_text(), filename=str(source))
        names.update(
            node.name
            for node in ast.walk(tree)
            if isinstance(node, ast.ClassDef) and node.name.endswith("Error")
        )
    return sorted(names)


def undocumented_errors() -> list[str]:
    """Error classes without a ``### <Name>`` section in docs/troubleshooting.md."""
    page = (ROOT / "docs" / "troubleshooting.md").read_text()
    headings = set(re.findall(r"^### (\w+)\s*$", page, flags=re.MULTILINE))
    return [name for name in error_classes() if name not in headings]


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        sys.stderr.write(f"usage: {argv[0]} SITE_DIR\n")
        return 2
    site = pathlib.Path(argv[1])
    if not (site / "api").is_dir():
        sys.stderr.write(f"{site}/api does not exist: build the site first (nox -s docs)\n")
        return 2
    ids = documented_ids(site)
    missing: list[str] = []
    total = 0
    for module, names in public_names().items():
        if module not in ids:
            missing.append(f"{module} (the module itself)")
        for name in names:
            total += 1
            if f"{module}.{name}" not in ids:
                missing.append(f"{module}.{name}")
    errors = undocumented_errors()
    if errors:
        sys.stderr.write(
            f"{len(errors)} error class(es) have no section in docs/troubleshooting.md: "
            f"{errors}. Add a '### <Name>' section with causes and fixes.\n"
        )
    if missing:
        sys.stderr.write(
            f"{len(missing)} public name(s) have no entry in the API reference ({site}/api):\n"
            + "".join(f"  {name}\n" for name in missing)
            + "Add the module to a page under docs/api/ (`::: module`) or document the name.\n"
        )
    if missing or errors:
        return 1
    modules = len(public_names())
    sys.stdout.write(
        f"API reference: all {total} public names of {modules} modules documented; "
        f"troubleshooting: all {len(error_classes())} error classes.\n"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
