"""benchmarks/RESULTS.md is generated, and the README quotes it faithfully.

* every ``## `` section of RESULTS.md lies between the markers of the script that wrote it, and
  ends with a Run line (command of that script, commit, date, machine, torch threads, load average
  before and after);
* every README number inside a ``<!-- results: SLUG -->`` ... ``<!-- /results -->`` block appears
  in that RESULTS.md section, and every README line with a percentage or a speed-up is inside
  such a block or inside an ``<!-- output: COMMAND -->`` block (a command's printed output);
* the marker helpers themselves write, replace and merge sections as documented.
"""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "RESULTS.md"
README = ROOT / "README.md"


def _results_file():
    spec = importlib.util.spec_from_file_location("results_file", ROOT / "benchmarks" / "results_file.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("results_file", module)
    spec.loader.exec_module(module)
    return module


RUN_LINE = re.compile(r"^\*\*Run\*\*: `python (?P<script>benchmarks/\S+\.py)[^`]*` · commit (?P<commit>\S+)[^·]* · "
                      r"(?P<date>\d{4}-\d{2}-\d{2} \d{2}:\d{2} UTC) · [\d.]+ min · (?P<machine>[^·]+) · "
                      r"(?P<threads>\d+) torch threads · load average \(1 / 5 / 15 min\) \S+ / \S+ / \S+ before, "
                      r"\S+ / \S+ / \S+ after$", re.M)
# a number as the README and RESULTS.md print them: 80.85%, 3.06x, 40.55M, 1,230.5
NUMBER = re.compile(r"(?<![\w.])\d[\d,]*(?:\.\d+)?(?:%|x\b|M\b)|(?<![\w.])\d[\d,]*\.\d+(?![\w.])")


def test_every_section_is_marked_and_has_a_run_line():
    rf = _results_file()
    text = RESULTS.read_text()
    sections = rf.sections(RESULTS)
    assert sections, "RESULTS.md has no generated section"
    inside = "".join(sections.values())
    for heading in re.findall(r"^## .*$", text, re.M):
        assert heading in inside, f"RESULTS.md section {heading!r} is outside the BEGIN/END markers of a script"
    for match in rf.BEGIN.finditer(text):
        slug, script = match["slug"], match["script"]
        assert (ROOT / script).is_file(), f"section {slug}: {script} does not exist"
        runs = list(RUN_LINE.finditer(sections[slug]))
        assert len(runs) == 1, f"section {slug}: expected one **Run** line with command, commit, date, machine, " \
                               "threads and load average before / after"
        assert runs[0]["script"] == script, f"section {slug}: written by {script}, Run line names {runs[0]['script']}"
        assert re.fullmatch(r"[0-9a-f]{7,40}", runs[0]["commit"]), f"section {slug}: no git commit in its Run line"
    assert len(set(m["slug"] for m in rf.BEGIN.finditer(text))) == len(sections), "a section slug appears twice"


def _blocks(text: str, kind: str):
    pattern = re.compile(rf"<!-- {kind}: (?P<name>[^>]+?) -->(?P<body>.*?)<!-- /{kind} -->", re.S)
    return [(m["name"].strip(), m["body"], m.start(), m.end()) for m in pattern.finditer(text)]


def _numbers(text: str) -> set[str]:
    return {n.replace(",", "") for n in NUMBER.findall(text)}


def _regenerate():
    _results_file()
    spec = importlib.util.spec_from_file_location("regenerate", ROOT / "benchmarks" / "regenerate.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["regenerate"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_regenerate_names_the_command_of_every_section():
    """benchmarks/regenerate.py is the one list of commands: every section of RESULTS.md is written by
    one of its steps, with the script that the section's markers name, and every step it lists exists."""
    rf, rg = _results_file(), _regenerate()
    text = RESULTS.read_text()
    by_section = {s: step for step in rg.STEPS for s in step.sections}
    for match in rf.BEGIN.finditer(text):
        step = by_section.get(match["slug"])
        assert step is not None, f"section {match['slug']} has no command in benchmarks/regenerate.py"
        assert step.command.split()[1] == match["script"], f"section {match['slug']}: regenerate.py runs " \
                                                           f"{step.command.split()[1]}, markers name {match['script']}"
    for step in rg.STEPS:  # (a section a new script has not written yet may be missing: --check lists it)
        assert (ROOT / step.command.split()[1]).is_file(), step.command
    assert rg.main(["--list"]) == 0
    with pytest.raises(SystemExit):
        rg.main(["--only", "no-such-section"])


def test_regenerate_check_reads_each_sections_commit(tmp_path, monkeypatch):
    rf, rg = _results_file(), _regenerate()
    path = tmp_path / "RESULTS.md"
    run = rf.Run(script="benchmarks/bench_x.py", command="python benchmarks/bench_x.py", commit="abc1234",
                 started="2026-11-30 12:00 UTC", load_before="0.00 / 0.00 / 0.00", threads=2)
    run.write("one", "One", "1.00%", path)
    run.commit = "abc1234 (dirty: 1 file)"
    run.write("two", "Two", "2.00%", path)
    assert rg.section_commits(path) == {"one": "abc1234", "two": "abc1234 (dirty: 1 file)"}


def test_readme_numbers_come_from_results():
    rf = _results_file()
    sections = rf.sections(RESULTS)
    readme = README.read_text()
    quoted = _blocks(readme, "results")
    assert quoted, "README quotes no RESULTS.md section"
    for name, body, _, _ in quoted:
        slugs = [s.strip() for s in name.split(",")]
        for slug in slugs:
            assert slug in sections, f"README quotes RESULTS.md section {slug!r}, which does not exist"
        source = _numbers("".join(sections[s] for s in slugs))
        missing = sorted(_numbers(body) - source)
        assert not missing, f"README numbers not in RESULTS.md section(s) {name}: {missing}"


def test_every_readme_result_is_inside_a_block():
    readme = README.read_text()
    spans = [(start, end) for kind in ("results", "output") for _, _, start, end in _blocks(readme, kind)]
    offset = 0
    for line in readme.splitlines(keepends=True):
        if re.search(r"\d%|\d\.\d+x\b", line) and not any(a <= offset < b for a, b in spans):
            pytest.fail(f"README line with a result outside a results/output block: {line.strip()[:120]}")
        offset += len(line)


def test_write_replace_and_merge(tmp_path):
    rf = _results_file()
    path = tmp_path / "RESULTS.md"
    run = rf.Run(script="benchmarks/bench_x.py", command="python benchmarks/bench_x.py --a 1", commit="abc1234",
                 started="2026-11-30 12:00 UTC", load_before="0.10 / 0.20 / 0.30", threads=2)
    run.write("first", "First", "| a |\n|---|\n| 1.00% |", path)
    run.write("second", "Second", "two", path)
    run.write("first", "First", "| a |\n|---|\n| 2.00% |", path)  # replaces its own section only
    text = path.read_text()
    assert text.startswith("# spikecast benchmark results")
    assert text.count("## First") == 1 and "2.00%" in text and "1.00%" not in text and "## Second" in text
    assert text.index("## First") < text.index("## Second")
    assert len(RUN_LINE.findall(text)) == 2
    with pytest.raises(ValueError, match="slug"):
        run.write("Bad Slug", "x", "y", path)

    other = tmp_path / "other.md"
    run.write("second", "Second", "three", other)
    assert rf.merge(other, path, note="merged") == ["second"]
    merged = rf.sections(path)
    assert "three" in merged["second"] and "merged" in merged["second"] and "2.00%" in merged["first"]

    # a section an older version of the script wrote under another name goes when its successor is written
    run.write("legacy", "Legacy", "| 7.77% |", path)
    run.write("successor", "Successor", "| 8.88% |", path, replaces=("legacy", "never-written"))
    text = path.read_text()
    assert "7.77%" not in text and "8.88%" in text and set(rf.sections(path)) == {"first", "second", "successor"}
    assert "\n\n\n" not in text and len(RUN_LINE.findall(text)) == 3
    run.write("successor", "Successor", "| 8.89% |", path, replaces=("successor",))  # itself: replaced, kept
    assert "8.89%" in path.read_text() and "successor" in rf.sections(path)

    path.write_text(path.read_text() + "\n## Typed by hand\n\n| 9.99% |\n")
    assert rf.prune(path) == ["Typed by hand"]
    assert "9.99%" not in path.read_text() and set(rf.sections(path)) == {"first", "second", "successor"}


def test_run_line_names_the_versions_of_libraries_the_script_loaded(monkeypatch):
    """A section's numbers can move with onnxruntime's or timm's version (pip resolves them afresh
    on each machine): the machine part of the Run line names each one the script imported, and
    none it did not."""
    import onnxruntime  # noqa: F401 - loaded, as a script using it would

    results_file = _results_file()
    monkeypatch.setattr(results_file, "VERSIONED", (*results_file.VERSIONED, "not_a_loaded_library"))
    described = results_file.machine()
    assert f"onnxruntime {onnxruntime.__version__}" in described
    assert f"torch {results_file.torch.__version__}" in described
    assert "not_a_loaded_library" not in described
    assert "·" not in described  # the Run line's fields are separated by it
