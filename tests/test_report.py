"""The results page (python -m runners.report, runners/analysis/report.py and figures.py): built
from a few committed records, checked for what it must show, for overlapping labels, for
byte-identical regeneration and in headless Chromium; the committed page of results/minilm_glue
is what its records give today."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.image import imread, imsave

from conftest import ROOT
from runners.analysis import figures, report
from runners.analysis.columns import load_layout
from runners.analysis.render import to_markdown
from runners.analysis.select import build_table, load_records

RESULTS = ROOT / "results" / "minilm_glue"
METHODS, TASKS = ("lora", "c3a_b6", "qgoft"), ("mrpc", "stsb")
FAILED = {"status": "failed", "mode": "train", "model": "minilm", "method": "lora", "task": "rte", "seed": 0,
          "lr": 0.001, "lr_head": 0.002, "reason": "non-finite training loss"}
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
PROBE = ('<script>addEventListener("load", () => { for (const i of document.images) if (!i.naturalWidth) '
         'console.error("broken image: " + i.getAttribute("src")); });</script></body>')


def small_records(root: Path) -> Path:
    """3 methods x MRPC, STS-B x 3 seeds of the committed table, less one seed, plus their memory
    records, one failed run and the pilot's runs of two methods; returns the runs folder."""
    for method in METHODS:
        for task in TASKS:
            shutil.copytree(RESULTS / "runs" / "train" / "minilm" / method / task,
                            root / "runs" / "train" / "minilm" / method / task)
        shutil.copytree(RESULTS / "memory" / "minilm" / method, root / "memory" / "minilm" / method)
    for method in ("lora", "qgoft"):
        shutil.copytree(RESULTS / "pilot" / "train" / "minilm" / method, root / "pilot" / "train" / "minilm" / method)
    next((root / "runs" / "train" / "minilm" / "qgoft" / "stsb").glob("*-s2-*.json")).unlink()
    (root / "runs" / "train" / "minilm" / "lora" / "rte").mkdir(parents=True)
    (root / "runs" / "train" / "minilm" / "lora" / "rte" / "failed.json").write_text(json.dumps(FAILED))
    return root / "runs"


def digests(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


@pytest.fixture(scope="module")
def page(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(runs folder, page folder) of the small records, written by the entry point."""
    runs = small_records(tmp_path_factory.mktemp("records"))
    out = runs.parent / "report"
    assert report.main(["--runs", str(runs), "--layout", "minilm_glue", "--pilot", str(runs.parent / "pilot")]) == 0
    return runs, out


def test_overlap_checker_sees_colliding_labels_and_only_those() -> None:
    fig = Figure(figsize=(4, 3))
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    ax.set_xlim(0, 10)
    ax.annotate("first label", (5, 0.5))
    assert figures.overlaps(fig) == []
    ax.annotate("second label", (5.2, 0.5))
    assert figures.overlaps(fig) == [("first label", "second label")]
    ax.set_xticks(range(0, 11), [f"tick {i}" for i in range(11)])  # eleven wide tick labels on 4 inches
    assert ("tick 0", "tick 1") in figures.overlaps(fig)


def test_pareto_front_keeps_what_nothing_beats_on_both() -> None:
    points = [(10, 70), (5, 60), (20, 65), (40, 80), (5, 55), (30, 80)]
    assert figures.pareto_front(points) == [(5, 60), (10, 70), (30, 80)]


def test_styles_differ_by_marker_and_by_grey_level() -> None:
    style = figures.styles([f"m{i}" for i in range(10)])
    assert len({s.marker for s in style.values()}) == 10
    grey = [0.299 * s.color[0] + 0.587 * s.color[1] + 0.114 * s.color[2] for s in style.values()]
    assert all(b - a > 0.03 for a, b in zip(grey, grey[1:]))  # viridis: lighter at every step


def test_the_page_shows_the_tables_selection_missing_runs_and_failures(page: tuple[Path, Path]) -> None:
    runs, out = page
    text = (out / "index.html").read_text()
    for src in re.findall(r'(?:src|href)="([^"]+)"', text):
        assert (out / src).stat().st_size > 1000, src
    stems = ["score_params_minilm", "score_memory_minilm", "curves_minilm", "contrasts", "lr_pilot"]
    assert sorted(re.findall(r'src="([^"]+)\.png"', text)) == sorted(stems)
    assert {p.name for p in out.iterdir()} == {"index.html", *(f"{s}.{e}" for s in stems for e in ("png", "pdf"))}
    assert "<script" not in text and "http" not in text  # offline: nothing fetched, no JavaScript
    # 50 cells in the layout (10 rows x 5 tasks); 6 have runs, at most 3 seeds: 44 x 3 + 1 missing
    assert "133 run(s) missing" in text and "6 of the layout's 50 cells" in text
    assert "non-finite training loss" in text
    assert "No finished runs of both for: c3a_b1 - lora, qgoft - goft" in text
    table = build_table(load_records(runs) + load_records(runs.parent / "memory"), load_layout("minilm_glue"))
    assert report.markdown_table_html(to_markdown(table)) in text  # the table's own cells and notes
    assert "78.51 ± 0.14" in to_markdown(table)  # qGOFT's MRPC, as in results/minilm_glue/table2.md


def test_regenerated_no_byte_changes_and_no_labels_overlap(page: tuple[Path, Path]) -> None:
    """The page built again from the same records: the same bytes in every file (no dates in the
    PNG and PDF metadata), and no two drawn labels intersect in any of its figures."""
    runs, out = page
    built = report.build_page(runs, load_layout("minilm_glue"), runs.parent / "memory", [runs.parent / "pilot"])
    assert len(built.figures) == 5
    assert report.write_page(built, runs.parent / "again") == []  # (figure, overlapping labels) for each
    assert digests(runs.parent / "again") == digests(out)


def test_contrast_pairs_replace_the_layouts(page: tuple[Path, Path]) -> None:
    runs, _ = page
    built = report.build_page(runs, load_layout("minilm_glue"), pairs=[("qgoft", "c3a_b6")])
    text = report.page_html(built)
    assert "mrpc: minilm: qgoft - c3a_b6 = " in text and " - lora" not in text
    assert [stem for stem, _, _ in built.figures] == ["score_params_minilm", "curves_minilm", "contrasts"]
    assert "No <code>mode=memory</code> records" in text


def test_bad_input_is_one_error_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert report.main(["--runs", str(tmp_path / "nothing")]) == 1
    assert capsys.readouterr().err == f"error: --runs: no records folder {tmp_path / 'nothing'}\n"


def browse(html: Path, tmp_path: Path) -> tuple[Path, list[str]]:
    """A screenshot of `html` in headless Chromium and the console messages of the page, with a
    probe (in a copy beside it) that logs every image the browser could not show."""
    probe = html.with_name("probe.html")
    probe.write_text(html.read_text().replace("</body>", PROBE))
    shot = tmp_path / "screenshot.png"
    try:
        proc = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                               "--enable-logging=stderr", "--v=0", f"--screenshot={shot}", "--window-size=1200,1600",
                               probe.as_uri()], capture_output=True, text=True, timeout=60)
    finally:
        probe.unlink()
    assert proc.returncode == 0, proc.stderr[-2000:]
    return shot, [line for line in proc.stderr.splitlines() if ":CONSOLE" in line]


def blank(png: Path) -> bool:
    """Whether a screenshot is (nearly) one colour: under 1% of its pixels differ from the corner's."""
    pixels = imread(png)[..., :3]
    return float((abs(pixels - pixels[0, 0]).sum(axis=-1) > 0.1).mean()) < 0.01


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium not installed (apt-get install chromium; .ci/run does)")
def test_the_page_renders_in_headless_chromium(page: tuple[Path, Path], tmp_path: Path) -> None:
    _, out = page
    shot, console = browse(out / "index.html", tmp_path)
    assert console == []
    assert not blank(shot)
    # the checks can fail: an image gone is logged, and a one-colour screenshot is blank
    broken = tmp_path / "broken"
    shutil.copytree(out, broken)
    (broken / "contrasts.png").unlink()
    assert any("broken image: contrasts.png" in line for line in browse(broken / "index.html", tmp_path)[1])
    white = tmp_path / "white.png"
    imsave(white, np.ones((40, 60, 3)))
    assert blank(white)


def test_the_committed_page_is_what_the_records_give(monkeypatch: pytest.MonkeyPatch) -> None:
    """results/minilm_glue/report/index.html is today's page of the committed records (its command
    in results/minilm_glue/README.md), and no labels overlap in its figures (drawn here: the
    committed PNGs are not re-read)."""
    monkeypatch.chdir(ROOT)
    results = RESULTS.relative_to(ROOT)
    built = report.build_page(results / "runs", load_layout("minilm_glue"), results / "memory",
                              [results / "pilot_session5", results / "pilot"])
    assert {stem: figures.overlaps(fig) for stem, fig, _ in built.figures} == {s: [] for s, _, _ in built.figures}
    committed = RESULTS / "report"
    assert {f"{stem}.{e}" for stem, _, _ in built.figures for e in ("png", "pdf")} | {"index.html"} == {
        p.name for p in committed.iterdir()}
    assert report.page_html(built) == (committed / "index.html").read_text()


def test_the_notebook_draws_with_the_pages_functions() -> None:
    """notebooks/analysis.ipynb holds no plotting code of its own: it calls runners.analysis.figures
    (tests/test_notebook.py executes it)."""
    nb = json.loads((ROOT / "notebooks" / "analysis.ipynb").read_text())
    code = "\n".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code")
    assert "figures.score_against(" in code and "figures.save(" in code
    assert not re.search(r"matplotlib|plt\.|\.plot\(|errorbar|savefig", code)
