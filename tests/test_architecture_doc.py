"""docs/architecture.md is checked: every `path` and `lossatlas.name` it puts in backticks exists, each
recipe names its registry and contract test, and the toy registrations in the contract tests follow
the recipes (registered with the registry's `register`, removed again, a case per built-in)."""
import ast
import importlib
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "architecture.md"
TEXT = DOC.read_text()
SPANS = sorted(set(re.findall(r"`([^`\n]+)`", TEXT)))
PATHS = [s for s in SPANS if "/" in s and " " not in s and "<" not in s and re.fullmatch(r"[\w./-]+", s)]
NAMES = [s for s in SPANS if re.fullmatch(r"lossatlas(\.\w+)+", s) and not s.endswith((".py", ".md"))]


def _file(path: str) -> Path:
    return ROOT / "src" / path if path.startswith("lossatlas/") else ROOT / path


def _recipe(title: str) -> str:
    match = re.search(rf"### {re.escape(title)}\n(.*?)(?=\n### |\Z)", TEXT, re.S)
    assert match, f"docs/architecture.md has no recipe {title!r}"
    return match.group(1)


def test_the_doc_names_enough_to_check():
    assert len(PATHS) > 30 and len(NAMES) > 10


@pytest.mark.parametrize("path", PATHS)
def test_named_paths_exist(path):
    assert _file(path).exists(), f"docs/architecture.md names {path}, which does not exist"


@pytest.mark.parametrize("name", NAMES)
def test_named_objects_exist(name):
    parts = name.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        for attr in parts[i:]:
            assert hasattr(obj, attr), f"docs/architecture.md names {name}: {attr!r} not found"
            obj = getattr(obj, attr)
        return
    pytest.fail(f"docs/architecture.md names {name}, which does not import")


def test_the_layers_and_the_flow_are_described():
    for heading in ("## The layers", "## The flow of one", "## Error policy", "## Recipes"):
        assert heading in TEXT
    layers = TEXT.split("## The layers")[1].split("## The flow")[0]
    order = ["errors.py", "problem.py", "store.py", "runner.py", "directions/", "curvature/", "convexity/",
             "surface.py", "paths.py", "plot/", "cli/"]
    positions = [layers.index(f"lossatlas/{name}") for name in order]
    assert positions == sorted(positions), "the layers are listed out of order"


def _top_level_names(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = {node.name for node in tree.body if isinstance(node, (ast.FunctionDef, ast.ClassDef))}
    for node in tree.body:
        targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, ast.AnnAssign) \
            else []
        names |= {t.id for t in targets if isinstance(t, ast.Name)}
    return names


# recipe -> (registry module, record class, contract test, cases dict, CLI module that reads the registry)
RECIPES = {
    "Add a direction kind": ("lossatlas/directions/_registry.py", "DirectionKind", "tests/test_direction_registry.py",
                             "CASES", "lossatlas/cli/surface_cmd.py"),
    "Add an audit method": ("lossatlas/convexity/_methods.py", "AuditMethod", "tests/test_method_registries.py",
                            "AUDIT_CASES", "lossatlas/cli/convexity_cmd.py"),
    "Add a curvature estimator": ("lossatlas/curvature/_registry.py", "CurvatureEstimator",
                                  "tests/test_method_registries.py", "CURVATURE_CASES",
                                  "lossatlas/cli/curvature_cmd.py"),
}


@pytest.mark.parametrize("title", sorted(RECIPES))
def test_each_registry_recipe_is_what_the_code_and_tests_do(title):
    registry, record, test, cases, cli = RECIPES[title]
    steps = _recipe(title)
    for named in (registry, test, cases, f"register({record}(...))"):
        assert named in steps, f"recipe {title!r} should name {named}"
    names = _top_level_names(_file(registry))
    assert {"register", "unregister", "REGISTRY", record} <= names
    module = importlib.import_module(registry[:-3].replace("/", "."))
    assert all(isinstance(r, getattr(module, record)) for r in module.REGISTRY.values())
    # the contract test holds a case per registered record, and its toy registration follows the recipe
    source = _file(test).read_text()
    assert cases in _top_level_names(_file(test))
    assert re.search(rf"register\({record}\(", source), f"{test} registers no toy {record}"
    assert "unregister(" in source, f"{test} leaves its toy registered"
    # the CLI reads the registry (no string ladder of the built-in names)
    cli_source = _file(cli).read_text()
    assert registry.rsplit("/", 1)[0].split("/", 1)[1].replace("/", ".") in cli_source.replace("/", ".")
    assert Path(registry).stem in cli_source


def test_the_cli_recipe_matches_the_cli_package():
    steps = _recipe("Add a CLI command")
    assert "@app.command()" in steps and "lossatlas/cli/__init__.py" in steps
    init = _file("lossatlas/cli/__init__.py").read_text()
    for module in sorted((ROOT / "src/lossatlas/cli").glob("*_cmd.py")):
        assert module.stem in init, f"{module.name} is not imported in lossatlas/cli/__init__.py"
        assert "@app.command(" in module.read_text()


def test_the_plot_and_grid_job_recipes_name_their_steps():
    plot = _recipe("Add a plot kind")
    assert "lossatlas/plot/__init__.py" in plot and '@public("plot.<name>")' in plot
    job = _recipe("Add a grid job")
    assert "run_grid" in job and "stored == in-memory" in job and "1 rank == 2 ranks" in job
