"""nox sessions for the Titanax monorepo, discovered from packages/*.

Sessions:
  tests-<py>(package=...)   each package's tests/ on Python 3.11, 3.12 and 3.13
  integration-<py>          cross-package tests in tests/ (parity across layouts, examples)
  lint                      ruff check + ruff format --check
  mypy                      mypy --strict over every package's sources
  wheels                    build every distribution, check the PEP 420 namespace, install each
                            wheel alone into a fresh venv and import its public API

Every session installs the versions pinned in uv.lock (exported as constraints), so CI tests what
was tested here. Interpreters come from PATH, plus pyenv's versions directory when pyenv exists.
A missing interpreter fails the run when CI is set, and is skipped with a message elsewhere.
"""

from __future__ import annotations

import functools
import glob
import os
import pathlib
import re
import shutil
import subprocess
import tomllib
import zipfile

import nox

ROOT = pathlib.Path(__file__).parent.resolve()
PYTHONS = ["3.11", "3.12", "3.13"]
DEFAULT_PYTHON = "3.11"
CONSTRAINTS = ROOT / ".nox" / "constraints.txt"

nox.options.default_venv_backend = "uv"


def _find_uv() -> str:
    """uv's binary: from the uv Python package beside nox, else PATH."""
    try:
        import uv

        return str(uv.find_uv_bin())
    except (ImportError, FileNotFoundError):
        found = shutil.which("uv")
        if found is None:
            raise RuntimeError("uv is required: python -m pip install uv") from None
        return found


UV = _find_uv()
nox.options.error_on_missing_interpreters = os.environ.get("CI", "").lower() in ("1", "true", "yes")
nox.options.sessions = ["lint", "mypy", "tests", "integration", "wheels", "docs"]
nox.options.reuse_existing_virtualenvs = True


def _add_pyenv_interpreters() -> None:
    """Puts pyenv's Python 3.11-3.13 bin directories on PATH (they are installed, not active)."""
    root = os.environ.get("PYENV_ROOT") or os.path.expanduser("~/.pyenv")
    extra = []
    for minor in PYTHONS:
        found = sorted(glob.glob(os.path.join(root, "versions", f"{minor}.*", "bin")))
        if found:
            extra.append(found[-1])
    if extra:
        os.environ["PATH"] = os.pathsep.join([*extra, os.environ.get("PATH", "")])


_add_pyenv_interpreters()


def _pyproject(package_dir: pathlib.Path) -> dict:
    with open(package_dir / "pyproject.toml", "rb") as fh:
        return tomllib.load(fh)


PACKAGE_DIRS = {
    _pyproject(path.parent)["project"]["name"]: path.parent
    for path in sorted(ROOT.glob("packages/*/pyproject.toml"))
}
PACKAGES = sorted(PACKAGE_DIRS)


def _requirement_name(requirement: str) -> str:
    return re.split(r"[\s<>=!~;\[]", requirement, maxsplit=1)[0].lower()


def _local_closure(name: str, extras: tuple[str, ...] = ()) -> list[str]:
    """The workspace packages ``name`` needs (itself included), following extras."""
    seen: list[str] = []

    def visit(dist: str, wanted: tuple[str, ...]) -> None:
        if dist in seen:
            return
        seen.append(dist)
        project = _pyproject(PACKAGE_DIRS[dist])["project"]
        requirements = list(project.get("dependencies", []))
        for extra in wanted:
            requirements += project.get("optional-dependencies", {}).get(extra, [])
        for requirement in requirements:
            dep = _requirement_name(requirement)
            dep_extras = re.findall(r"\[([^\]]+)\]", requirement)
            nested = tuple(e.strip() for e in dep_extras[0].split(",")) if dep_extras else ()
            if dep == dist and nested:  # self-referencing extra, e.g. titanax[all] -> titanax[mesh]
                for extra in nested:
                    if extra not in wanted:
                        visit_extra(dist, extra)
            elif dep in PACKAGE_DIRS:
                visit(dep, nested)

    def visit_extra(dist: str, extra: str) -> None:
        project = _pyproject(PACKAGE_DIRS[dist])["project"]
        for requirement in project.get("optional-dependencies", {}).get(extra, []):
            dep = _requirement_name(requirement)
            if dep in PACKAGE_DIRS and dep != dist:
                visit(dep, ())

    visit(name, extras)
    return seen


def _test_requirements(name: str) -> list[str]:
    groups = _pyproject(PACKAGE_DIRS[name]).get("dependency-groups", {})
    return [r for r in groups.get("test", []) if isinstance(r, str)]


@functools.cache
def _constraints() -> pathlib.Path:
    """uv.lock exported as a constraints file (third-party pins only)."""
    CONSTRAINTS.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [
            UV,
            "export",
            "--frozen",
            "--no-hashes",
            "--no-emit-workspace",
            "--all-packages",
            "--all-groups",
            "--no-header",
            "--quiet",
            "-o",
            str(CONSTRAINTS),
        ],
        cwd=ROOT,
        check=True,
    )
    return CONSTRAINTS


def _install(session: nox.Session, *args: str) -> None:
    # Let Python cache bytecode of the modules it actually imports (some machines export
    # PYTHONDONTWRITEBYTECODE=1, which makes every process compile jax again: ~2 s instead of
    # ~0.5 s per import). Cheaper than compiling the whole environment at install time.
    session.env["PYTHONDONTWRITEBYTECODE"] = ""
    session.install("-c", str(_constraints()), *args)


TEST_TOOLS = ["pytest", "pytest-timeout", "pytest-xdist", "hypothesis"]
# Suites dominated by XLA compiles run on two pytest-xdist workers (compiles are single-threaded).
XDIST = ["-n", os.environ.get("TITANAX_TEST_WORKERS", "2")]
HEAVY = {"titanax-exec", "titanax-io", "titanax-pipeline", "titanax-cli", "titanax-models"}


@nox.session(python=PYTHONS)
@nox.parametrize("package", PACKAGES)
def tests(session: nox.Session, package: str) -> None:
    """Runs one package's tests with only that package and its Titanax dependencies installed."""
    tests_dir = PACKAGE_DIRS[package] / "tests"
    closure = _local_closure(package, ("all",) if package == "titanax" else ())
    closure += [d for d in _local_closure("titanax-testing") if d not in closure]
    editable = [arg for dist in closure for arg in ("-e", str(PACKAGE_DIRS[dist]))]
    _install(session, *editable, *TEST_TOOLS, *_test_requirements(package))
    session.run(
        "pytest",
        str(tests_dir),
        "-p",
        "no:cacheprovider",
        f"--rootdir={ROOT}",
        "-q",
        *(XDIST if package in HEAVY else []),
        *session.posargs,
    )


# The cross-package suite runs on the oldest and the newest JAX we support (Python 3.11 gets
# jax 0.10.x, 3.12+ get 0.12.x); Python 3.13 adds no JAX version, its packages are tested above.
INTEGRATION_PYTHONS = ["3.11", "3.12"]
# The examples and the CLI end to end run once, on the default Python: the Python a fresh machine
# runs the README's main job with. Numerics across layouts and the multi-process runtime, which
# depend on the JAX version, run on both.
ONCE_ONLY = ["test_examples.py", "test_cli_e2e.py"]


@nox.session(python=INTEGRATION_PYTHONS)
def integration(session: nox.Session) -> None:
    """Cross-package tests in tests/ with every package installed."""
    editable = [arg for dist in PACKAGES for arg in ("-e", str(PACKAGE_DIRS[dist]))]
    extras = sorted({r for dist in PACKAGES for r in _test_requirements(dist)})
    _install(session, *editable, *TEST_TOOLS, *extras)
    skip = [] if session.python == DEFAULT_PYTHON else ONCE_ONLY
    ignore = [f"--ignore={ROOT / 'tests' / name}" for name in skip]
    session.run(
        "pytest",
        str(ROOT / "tests"),
        "-p",
        "no:cacheprovider",
        "-q",
        *ignore,
        *XDIST,
        *session.posargs,
    )


@nox.session(python=DEFAULT_PYTHON)
def lint(session: nox.Session) -> None:
    """ruff check and ruff format --check over the whole repository."""
    _install(session, "ruff")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session(python=DEFAULT_PYTHON)
def mypy(session: nox.Session) -> None:
    """mypy --strict over every package's sources (configuration in the root pyproject)."""
    editable = [arg for dist in PACKAGES for arg in ("-e", str(PACKAGE_DIRS[dist]))]
    _install(session, "mypy", *editable, *TEST_TOOLS)
    sources = [str(PACKAGE_DIRS[d] / "src") for d in PACKAGES]
    sources = [s for s in sources if any(pathlib.Path(s).rglob("*.py"))]
    session.run("mypy", *sources)


def _module_of(dist: str) -> str | None:
    if dist == "titanax":
        return None
    return "titanax." + dist.removeprefix("titanax-").replace("-", "_")


WHEEL_SMOKE = {
    "titanax-mesh": (
        "import jax, jax.numpy as jnp\n"
        "from jax.sharding import PartitionSpec as P\n"
        "from titanax.mesh import MeshSpec, collectives\n"
        "mesh = MeshSpec(axes=('data',), shape=(-1,)).build()\n"
        "f = jax.shard_map(lambda x: collectives.psum(x, 'data'), mesh=mesh,"
        " in_specs=P('data'), out_specs=P())\n"
        "assert float(f(jnp.arange(2.0))[0]) == 1.0, 'psum over the wheel failed'\n"
        "print(MeshSpec(axes=('data',), shape=(-1,)).describe())\n"
    ),
}


@nox.session(python=DEFAULT_PYTHON)
def wheels(session: nox.Session) -> None:
    """Builds every distribution, checks no wheel ships titanax/__init__.py, then installs each
    wheel alone (with the wheels of its Titanax dependencies) into a fresh venv and uses it."""
    dist_dir = ROOT / ".nox" / "dist"
    shutil.rmtree(dist_dir, ignore_errors=True)
    _install(session, "build", "hatchling")
    for name in PACKAGES:
        session.run(
            "python",
            "-m",
            "build",
            "--wheel",
            "--no-isolation",
            "--outdir",
            str(dist_dir),
            str(PACKAGE_DIRS[name]),
            silent=True,
        )
    built = sorted(dist_dir.glob("*.whl"))
    for wheel in built:
        with zipfile.ZipFile(wheel) as zf:
            names = zf.namelist()
        if "titanax/__init__.py" in names:
            session.error(f"{wheel.name} ships titanax/__init__.py; titanax must stay a namespace")
        session.log(f"{wheel.name}: {len(names)} files, no titanax/__init__.py")
    for name in PACKAGES:
        venv = ROOT / ".nox" / "wheel-venvs" / name
        shutil.rmtree(venv, ignore_errors=True)
        session.run(UV, "venv", "-q", "--python", session.python, str(venv), external=True)
        python = str(venv / "bin" / "python")
        extra = "[all]" if name == "titanax" else ""
        session.run(
            UV,
            "pip",
            "install",
            "-q",
            "--python",
            python,
            "--find-links",
            str(dist_dir),
            "-c",
            str(_constraints()),
            f"{name}{extra}",
            external=True,
            env={"UV_COMPILE_BYTECODE": "1"},
        )
        module = _module_of(name)
        modules = (
            [module] if module else [_module_of(d) for d in _local_closure(name, ("all",))[1:]]
        )
        if name == "titanax":  # the meta-distribution's own plain module
            modules.append("titanax.quickstart")
        check = "".join(
            f"import {m} as mod\n"
            f"missing = [n for n in mod.__all__ if not hasattr(mod, n)]\n"
            f"assert not missing, ('{m}', missing)\n"
            f"print('{m}', getattr(mod, '__version__', '-'), len(mod.__all__), 'public names')\n"
            for m in modules
            if m
        )
        session.run(
            python,
            "-c",
            check + WHEEL_SMOKE.get(name, ""),
            external=True,
            env={"JAX_NUM_CPU_DEVICES": "2", "JAX_PLATFORMS": "cpu"},
        )


# Documentation tools, pinned here because uv.lock does not cover them (docs-only, never a
# dependency of a distribution). Bump them together and rebuild: the build is strict.
DOCS_TOOLS = [
    "mkdocs==1.6.1",
    "mkdocs-material==9.8.2",
    "mkdocstrings==1.0.8",
    "mkdocstrings-python==2.0.11",
    "ruff",  # formats the rendered signatures (pinned by uv.lock)
]


@nox.session(python=DEFAULT_PYTHON)
def docs(session: nox.Session) -> None:
    """Builds the documentation site (mkdocs --strict: any warning fails) into .nox/site, then
    checks that every name of every package's __all__ has an entry in the API reference and
    every error class a section in docs/troubleshooting.md."""
    editable = [arg for dist in PACKAGES for arg in ("-e", str(PACKAGE_DIRS[dist]))]
    _install(session, *editable, *DOCS_TOOLS)
    site = ROOT / ".nox" / "site"
    session.run(
        "mkdocs",
        "build",
        "--strict",
        "--config-file",
        str(ROOT / "mkdocs.yml"),
        "--site-dir",
        str(site),
        # The schedule hook imports titanax.pipeline (JAX on CPU is enough); the variable below
        # silences Material's end-of-life banner, which is not a build warning.
        env={"JAX_PLATFORMS": "cpu", "NO_MKDOCS_2_WARNING": "1"},
    )
    session.run("python", str(ROOT / "docs" / "check_public_names.py"), str(site))


@nox.session(python=DEFAULT_PYTHON)
def bench(session: nox.Session) -> None:
    """Every benchmark, one process each, at XLA's default optimization level; writes
    benchmarks/results/<name>.json and benchmarks/results/SUMMARY.md (see benchmarks/run_all.py)."""
    editable = [arg for dist in PACKAGES for arg in ("-e", str(PACKAGE_DIRS[dist]))]
    _install(session, *editable)
    session.run("python", str(ROOT / "benchmarks" / "run_all.py"), *session.posargs)
