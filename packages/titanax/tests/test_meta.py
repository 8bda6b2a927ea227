"""The meta-distribution's extras name every Titanax package, and [all] names every extra."""

from __future__ import annotations

import pathlib
import re
import tomllib

PACKAGES = pathlib.Path(__file__).resolve().parents[2]
DEV_ONLY = {"titanax-testing", "titanax"}


def _load(path: pathlib.Path) -> dict:
    with open(path, "rb") as fh:
        return tomllib.load(fh)


def test_extras_cover_every_package() -> None:
    meta = _load(PACKAGES / "titanax" / "pyproject.toml")["project"]
    extras = meta["optional-dependencies"]
    names = {_load(p)["project"]["name"] for p in PACKAGES.glob("*/pyproject.toml")} - DEV_ONLY
    assert names, "no packages found"
    for dist in names:
        short = dist.removeprefix("titanax-")
        assert short in extras, f"titanax[{short}] is missing for {dist}"
        assert any(r.startswith(f"{dist}>=") for r in extras[short]), extras[short]
    listed = re.findall(r"titanax\[([^\]]+)\]", " ".join(extras["all"]))
    in_all = {e.strip() for group in listed for e in group.split(",")}
    assert in_all == set(extras) - {"all"}


def test_dependency_ranges_not_pins() -> None:
    for path in PACKAGES.glob("*/pyproject.toml"):
        project = _load(path)["project"]
        requirements = list(project.get("dependencies", []))
        for group in project.get("optional-dependencies", {}).values():
            requirements += group
        for requirement in requirements:
            if requirement.startswith("titanax-"):
                assert "==" not in requirement, (path, requirement)
                assert "<" in requirement, (path, requirement)
        assert project["requires-python"] == ">=3.11"
        for key in ("description", "license", "classifiers", "readme"):
            assert project.get(key), (path, key)


def test_no_distribution_ships_a_namespace_init() -> None:
    for src in PACKAGES.glob("*/src/titanax"):
        assert not (src / "__init__.py").exists(), src
