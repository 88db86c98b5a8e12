"""index.html: one self-contained page with every table, figure, the config and the code versions.

The fast tests parse the page with ``html.parser``; the browser test opens it in headless
Chromium and asks the page's DOM whether every image decoded and every table has rows.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import struct
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pandas as pd
import pytest

from pipeline import paper, report
from pipeline.report.tables import beyond_table, final_table, seed_tests
from pipeline.results import COLUMNS, make_rows, write_unit

REPO = Path(__file__).resolve().parent.parent
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SCENARIO, T = "cifar100/5", 5
# Text that must come out escaped: a config value and a code version with markup in them.
CONFIG = "name: <b>html&demo</b>\nseed: 5\nmerge:\n  magmax_lambda: 0.5\n"
VERSIONS = ("abc1234", "def<5678>")
PAPER_MAGMAX = paper.lookup("table1", "magmax", "seq", "cifar100", "class_incremental", 5)
PAPER_TIES = paper.lookup("table1", "ties", "ind", "cifar100", "class_incremental", 5)


def run_rows() -> list[dict]:
    """Two seeds on one paper scenario (Table 1's CIFAR100 /5): MagMax 1 point above the paper,
    TIES 2 below, OPCM (seq) best of all; a newer merge (the "Beyond the paper" table), a matrix and a sweep (two
    figures) and a forgetting number (an unranked table)."""
    sc = {"scenario": SCENARIO, "dataset": "cifar100"}
    final = {("zero_shot", "none"): 60.0, ("joint", "joint"): 99.0, ("avg", "ind"): 65.0,
             ("ties", "ind"): PAPER_TIES - 2, ("magmax", "seq"): PAPER_MAGMAX + 1,
             ("opcm", "ind"): 70.0, ("opcm", "seq"): PAPER_MAGMAX + 3}
    lams = {"magmax": 0.5, "ties": 0.55}
    entries = []
    for seed, version, shift in ((5, VERSIONS[0], -0.5), (6, VERSIONS[1], 0.5)):
        s = {**sc, "seed": seed, "code_version": version}
        for (method, ft), v in final.items():
            entries.append({**s, "method": method, "finetuning": ft, "role": "final", "metric": "accuracy",
                            "after_task": -1 if method == "zero_shot" else T - 1, "value": v + shift,
                            "lam": lams.get(method, float("nan"))})
    s = {**sc, "seed": 5, "code_version": VERSIONS[0]}
    entries += [{**s, "method": "magmax", "finetuning": "seq", "role": "matrix", "metric": "accuracy",
                 "after_task": r, "eval_task": c, "value": 50.0 + 5 * r - c} for r in range(T) for c in range(T)]
    entries += [{**s, "method": "magmax", "finetuning": "seq", "role": "sweep", "metric": "accuracy",
                 "lam": lam, "after_task": T - 1, "value": 70 - 10 * abs(lam - 0.5)} for lam in (0.25, 0.5, 1.0)]
    entries.append({**s, "method": "magmax", "finetuning": "seq", "role": "analysis",
                    "metric": "first_task_forgetting", "value": 9.8})
    return make_rows({"run": "html<run>", "backbone": "ViT-B-16/openai", "config_hash": "h"}, entries)


class Page(HTMLParser):
    """Tables as rows of cells (text, marks), images, links, <pre> text and any tag that would
    reach outside the page."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tables: list[dict] = []          # {"head": [[cell]], "body": [[cell]]}
        self.images: list[str] = []
        self.links: list[str] = []
        self.pre: list[str] = []
        self.external: list[str] = []
        self.text: list[str] = []
        self._stack: list[str] = []
        self._cell: dict | None = None
        self._part = "body"

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self._stack.append(tag)
        if tag in ("script", "link", "iframe", "object", "embed"):
            self.external.append(tag)
        for key in ("src", "href"):
            if re.match(r"^[a-z]+://|^//", a.get(key) or ""):
                self.external.append(a[key])
        if tag == "table":
            self.tables.append({"head": [], "body": []})
        elif tag in ("thead", "tbody"):
            self._part = "head" if tag == "thead" else "body"
        elif tag == "tr":
            self.tables[-1][self._part].append([])
        elif tag in ("td", "th"):
            self._cell = {"text": "", "marks": set(), "classes": set()}
            self.tables[-1][self._part][-1].append(self._cell)
        elif tag in ("strong", "u") and self._cell is not None:
            self._cell["marks"].add(tag)
        elif tag == "span" and self._cell is not None:
            self._cell["classes"] |= set((a.get("class") or "").split())
        elif tag == "img":
            self.images.append(a.get("src") or "")
        elif tag == "a":
            self.links.append(a.get("href") or "")
        elif tag == "pre":
            self.pre.append("")

    def handle_endtag(self, tag):
        while self._stack and self._stack.pop() != tag:
            pass
        if tag in ("td", "th"):
            self._cell = None

    def handle_data(self, data):
        self.text.append(data)
        if self._cell is not None:
            self._cell["text"] += data
        if self._stack and self._stack[-1] == "pre":
            self.pre[-1] += data


def parse(path: Path) -> Page:
    p = Page()
    p.feed(path.read_text(encoding="utf-8"))
    p.close()
    return p


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == PNG_MAGIC
    return struct.unpack(">II", data[16:24])  # IHDR: width, height


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> tuple[pd.DataFrame, Path]:
    """The run written as the runner would (Parquet + config.yaml), then ``make_report`` on it:
    the config comes from the run folder, not from an argument."""
    from jobs import make_report

    df = pd.DataFrame(run_rows(), columns=list(COLUMNS))
    run_dir = tmp_path_factory.mktemp("run")
    write_unit(df[df["role"] == "final"], run_dir / "units" / "final.parquet")
    write_unit(df[df["role"] != "final"], run_dir / "units" / "rest.parquet")
    (run_dir / "config.yaml").write_text(CONFIG)
    assert make_report.main([str(run_dir)]) == 0
    return df, run_dir / "report"


def test_page_is_self_contained_and_every_image_is_an_embedded_png(run):
    _, out = run
    page = parse(out / "index.html")
    assert page.external == []  # no script, stylesheet or URL: the page works from anywhere
    pngs = sorted(p for p in out.iterdir() if p.suffix == ".png")
    assert [p.stem for p in pngs] == ["accuracy_matrices", "lambda_sweep"]
    assert len(page.images) == len(pngs)
    decoded = []
    for src in page.images:
        prefix = "data:image/png;base64,"
        assert src.startswith(prefix)
        decoded.append(base64.b64decode(src[len(prefix):], validate=True))
    assert sorted(decoded) == sorted(p.read_bytes() for p in pngs)  # the very files, byte for byte
    # the other files are linked relative to the page, and exist there
    files_linked = [h for h in page.links if not h.startswith("#")]
    assert {"accuracy_matrices.pdf", "lambda_sweep.pdf", "table.md", "table1.tex", "beyond.md"} <= set(files_linked)
    for href in files_linked:
        assert (out / href).is_file(), href
    anchors = {h[1:] for h in page.links if h.startswith("#")}
    html_text = (out / "index.html").read_text(encoding="utf-8")
    for a in anchors:
        assert f'id="{a}"' in html_text


def test_every_table_has_its_rows_and_marks(run):
    df, out = run
    page = parse(out / "index.html")
    final, beyond, layout = final_table(df), beyond_table(df), paper.LAYOUTS["table1"]
    # final, beyond, seeds (two seeds: each variant's test against MagMax), Table 1, forgetting
    assert len(page.tables) == 5
    t_final, t_beyond, t_seeds, t_paper, t_forget = page.tables
    seeds = seed_tests(df)
    assert [r[0]["text"] for r in t_seeds["body"]] == list(seeds.index)
    assert [[c["text"] for c in r[1:]] for r in t_seeds["body"]] == seeds.to_numpy().tolist()
    assert [r[0]["text"] for r in t_final["body"]] == list(final.index)
    assert [r[0]["text"] for r in t_beyond["body"]] == list(beyond.index)
    assert [r[0]["text"] for r in t_paper["body"]] == [r.label for r in layout.rows]
    assert [r[0]["text"] for r in t_forget["body"]] == ["MagMax"]
    # final table: every cell of the frame, mean ± std over the two seeds, as printed in table.md
    by_label = {r[0]["text"]: r for r in t_final["body"]}
    assert by_label["MagMax"][1]["text"] == f"{PAPER_MAGMAX + 1:.2f} ± 0.71"
    # best / second among ranked rows (Joint is higher but a reference): OPCM (seq), then MagMax
    marks = {label: r[1]["marks"] for label, r in by_label.items()}
    assert marks["OPCM (seq)"] == {"strong"} and marks["MagMax"] == {"u"}
    assert marks["Joint"] == set() and sum(bool(m) for m in marks.values()) == 2
    # the paper table: ours / paper (diff), green where ours >= paper, red below
    col = [c.label for c in layout.columns].index("CIFAR100 /5") + 1
    rows = {r[0]["text"]: r for r in t_paper["body"]}
    magmax, ties = rows["MagMax"][col], rows["TIES"][col]
    assert magmax["text"].startswith(f"{PAPER_MAGMAX + 1:.2f} ± 0.71 / {PAPER_MAGMAX:.2f}")
    assert magmax["text"].endswith("(+1.00)") and "ge" in magmax["classes"] and "lt" not in magmax["classes"]
    assert ties["text"].endswith("(-2.00)") and "lt" in ties["classes"]
    assert magmax["marks"] == {"strong"} and ties["marks"] == {"u"}  # OPCM is no row of Table 1
    # a cell the run lacks: "–" beside the paper's number, no difference
    other = rows["MagMax"][col + 1]["text"]
    assert other.startswith("– / ") and "(" not in other
    # the grouped header as the paper prints it: a group row, then the splits
    assert [c["text"] for c in t_paper["head"][0]][:2] == ["Method", "CIFAR100"]
    assert [c["text"] for c in t_paper["head"][1]][:4] == ["/5", "/10", "/20", "/50"]


def test_config_and_code_versions_are_on_the_page_escaped(run):
    _, out = run
    text = (out / "index.html").read_text(encoding="utf-8")
    page = parse(out / "index.html")
    assert page.pre == [CONFIG]  # the run folder's config.yaml, verbatim once unescaped
    assert "<b>html&demo</b>" not in text and "&lt;b&gt;html&amp;demo&lt;/b&gt;" in text
    joined = "".join(page.text)
    assert f"code versions: {', '.join(sorted(VERSIONS))}" in joined
    assert "def&lt;5678&gt;" in text and "MagMax report: html<run>" in joined


def test_write_report_takes_config_text_and_works_without_one(tmp_path):
    df = pd.DataFrame(run_rows(), columns=list(COLUMNS))
    final = df[df["role"] == "final"]
    paths = report.write_report(final, tmp_path / "a", suffixes=(".png",), config="x: 1\n")
    assert parse(paths["index_html"]).pre == ["x: 1\n"]
    paths = report.write_report(final, tmp_path / "b", suffixes=(".png",))
    page = parse(paths["index_html"])
    assert page.pre == [] and "No config.yaml was given to the report." in "".join(page.text)
    empty = report.write_report(df.iloc[:0], tmp_path / "c")
    assert parse(empty["index_html"]).tables == []


# --------------------------------------------------------------------------------------------
# In a browser

_CHECK = """<script>
window.addEventListener("load", () => {
  const images = Array.from(document.images).map(i => ({ok: i.complete && i.naturalWidth > 0,
                                                         width: i.naturalWidth, height: i.naturalHeight}));
  const tables = Array.from(document.querySelectorAll("table"))
    .map(t => t.tBodies.length ? t.tBodies[0].rows.length : 0);
  const out = document.createElement("pre");
  out.id = "browser-check";
  out.textContent = JSON.stringify({images, tables});
  document.body.appendChild(out);
});
</script>"""


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def test_the_page_renders_in_headless_chromium(run, tmp_path):
    """Every image decodes to its PNG's size and every table has body rows, in a real browser.

    The check is a script added to a copy of the page (the page itself needs none)."""
    exe = chromium()
    if exe is None:
        why = "no chromium on PATH (apt-get install chromium; .ci/run installs it)"
        if os.environ.get("CI"):
            pytest.fail(f"{why}: required in CI")
        pytest.skip(why)
    _, out = run
    page = (out / "index.html").read_text(encoding="utf-8")
    probe = tmp_path / "probe" / "index.html"
    probe.parent.mkdir()
    probe.write_text(page.replace("</body>", _CHECK + "</body>"), encoding="utf-8")
    cmd = [exe, "--headless", "--disable-gpu", "--no-sandbox", "--disable-dev-shm-usage",
           f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=5000", "--dump-dom",
           probe.as_uri()]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    found = re.search(r'<pre id="browser-check">(.*?)</pre>', done.stdout, re.S)
    assert found, f"the check did not run; chromium said: {done.stderr[-2000:]}"
    result = json.loads(found.group(1).replace("&quot;", '"').replace("&amp;", "&"))
    expected = [png_size(p.read_bytes()) for p in sorted(out.glob("*.png"))]
    got = [(i["width"], i["height"]) for i in result["images"] if i["ok"]]
    assert len(result["images"]) == len(expected) and sorted(got) == sorted(expected)
    assert len(result["tables"]) == 5 and all(n > 0 for n in result["tables"]), result["tables"]
