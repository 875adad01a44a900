"""The README's Python examples run as written."""
import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def python_blocks():
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


@pytest.mark.parametrize("index", range(len(python_blocks())))
def test_readme_python_block_runs(index, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    exec(compile(python_blocks()[index], f"README.md[python {index}]", "exec"), {"__name__": "__readme__"})
    assert capsys.readouterr().out.strip()


def test_readme_shows_the_two_commands():
    text = README.read_text()
    assert "make demo" in text and "make test" in text


def console_commands():
    blocks = re.findall(r"```console\n(.*?)```", README.read_text(), flags=re.S)
    return [line[2:].split() for block in blocks for line in block.splitlines() if line.startswith("$ ")]


def test_readme_cli_examples_run(tmp_path, monkeypatch):
    from lossatlas.cli import main

    monkeypatch.chdir(tmp_path)
    commands = console_commands()
    assert len(commands) >= 5
    for argv in commands:
        assert argv[0] == "lossatlas"
        try:
            main(argv[1:])
        except SystemExit as exc:
            assert exc.code in (0, None), f"{' '.join(argv)} exited with {exc.code}"
    assert (tmp_path / "plane.png").exists() and (tmp_path / "plane.html").exists()


def test_readme_images_exist():
    for ref in re.findall(r"\]\((docs/images/[^)]+)\)", README.read_text()):
        assert (README.parent / ref).exists(), ref


def test_readme_examples_run_top_to_bottom_in_one_folder():
    """Each example that writes a store uses its own name (or says --overwrite): run in one folder,
    top to bottom, none meets a store another example made with other arguments."""
    text = README.read_text()
    writers = {}
    for m in re.finditer(r'store="([^"]+)"|--store (\S+)', text):
        name = m.group(1) or m.group(2)
        line = text[text.rfind("\n", 0, m.start()) + 1:text.find("\n", m.end())]
        if "--overwrite" in line or "overwrite=True" in line or line.lstrip().startswith("`surface(..."):
            continue
        writers.setdefault(name, set()).add(line.strip().lstrip("$ "))
    shared = {k: v for k, v in writers.items() if len(v) > 1}
    assert not shared, shared
