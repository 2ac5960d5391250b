"""The book builds offline without warnings, and renders in a real browser (headless Chromium) with its figures."""
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import CHROMIUM_FLAGS, chromium_or_skip
from PIL import Image

from zsad.config import PROJECT_ROOT

CHAPTER = "notebooks/t02_main_results.html"


@pytest.fixture(scope="module")
def built_book(tmp_path_factory):
    out = tmp_path_factory.mktemp("book")
    jb = Path(sys.executable).with_name("jupyter-book")
    proc = subprocess.run([str(jb), "build", str(PROJECT_ROOT), "--path-output", str(out), "-W", "-n",
                           "--keep-going"], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out / "_build" / "html"


def test_book_builds_with_every_chapter(built_book):
    for page in ("index.html", *(f"{p}.html" for p in PAGES)):
        assert (built_book / page).is_file(), f"{page} was not built"
    html = (built_book / CHAPTER).read_text()
    assert "RANDOM WEIGHTS" in html and "FADE Tab. 1" in html and "AUROC · MVTec-AD · paper" in html


def _toc_pages(entries=None) -> list[str]:
    """Every page of ``_toc.yml`` as it is when the tests run (a chapter added later is covered too), in order."""
    import yaml

    if entries is None:
        toc = yaml.safe_load((PROJECT_ROOT / "_toc.yml").read_text())
        return [toc["root"], *_toc_pages(toc.get("parts", []))]
    pages = []
    for entry in entries:
        if "file" in entry:
            pages.append(entry["file"])
        pages += _toc_pages(entry.get("chapters", []) + entry.get("sections", []))
    return pages


PAGES = _toc_pages()
# The chapters whose numbers come from models open with the weights banner: every notebook chapter except the data
# chapter, which runs no model (t12 reads the other chapters' run folders and says which weights made them).
BANNER_PAGES = [p for p in PAGES if p.startswith("notebooks/") and p != "notebooks/t01_data"]


def _source_figures(page: str) -> int:
    """How many figures a page's source holds: image outputs of its executed notebook, or image/figure directives
    and Markdown images of a prose page."""
    import json

    source = PROJECT_ROOT / f"{page}.ipynb"
    if source.is_file():
        cells = json.loads(source.read_text())["cells"]
        return sum("image/png" in out.get("data", {}) for cell in cells for out in cell.get("outputs", []))
    text = (PROJECT_ROOT / f"{page}.md").read_text()
    return len(re.findall(r"```\{(?:figure|image)\}|!\[[^\]]*\]\(", text))


# Injected into a copy of each page: once the page and its images have loaded, it writes where Chromium laid out the
# weights banner (a warning/note box naming RANDOM WEIGHTS or the checkpoint; the provenance box is not one), the
# first table and the first figure, in page coordinates, into the DOM, which --dump-dom prints.
PROBE = """<script>
window.addEventListener('load', function () {
  function box(el) {
    if (!el) return null;
    var r = el.getBoundingClientRect();
    return {top: r.top + window.scrollY, bottom: r.bottom + window.scrollY, height: r.height};
  }
  var article = document.querySelector('article.bd-article') || document.body;
  var banner = Array.prototype.find.call(article.querySelectorAll('.admonition.warning, .admonition.note'),
    function (a) {
      return !a.classList.contains('admonition-provenance') && /RANDOM WEIGHTS|Weights: /.test(a.textContent);
    });
  var images = article.querySelectorAll('img');
  var shown = Array.prototype.filter.call(images, function (i) {
    return i.complete && i.naturalWidth > 0 && i.getBoundingClientRect().height > 0; });
  var out = document.createElement('pre');
  out.id = 'zsad-probe';
  out.textContent = JSON.stringify({banner: box(banner), table: box(article.querySelector('table')),
                                    figure: box(shown[0]), shown: shown.length, images: images.length});
  document.body.appendChild(out);
});
</script>"""


def _render(browser: str, page: Path, shot: Path, profile: Path) -> dict | str:
    """Lay out a copy of ``page`` with :data:`PROBE` in headless Chromium (1280 px wide), save a screenshot of its
    top 8000 px to ``shot``, and return the probe's measurements (or why there are none)."""
    import html
    import json

    if not page.is_file():
        return "the page was not built"
    copy = page.with_name(f"_zsad_probe_{page.name}")
    copy.write_text(page.read_text().replace("</body>", PROBE + "</body>"))
    proc = subprocess.run([browser, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--window-size=1280,8000",
                           "--virtual-time-budget=1000", f"--screenshot={shot}", "--dump-dom", copy.as_uri()],
                          capture_output=True, text=True, timeout=120)
    found = re.search(r'<pre id="zsad-probe"[^>]*>(.*?)</pre>', proc.stdout, re.S)
    if proc.returncode != 0 or not found:
        return f"the layout probe did not run (Chromium exit {proc.returncode}: {proc.stderr[-500:]})"
    return json.loads(html.unescape(found.group(1)))


@pytest.fixture(scope="module")
def rendered(built_book, tmp_path_factory):
    """Every page of the book laid out by headless Chromium, two at a time: {page: (probe or error, screenshot)}.
    The screenshots stay in the session's temporary folder for a look."""
    from concurrent.futures import ThreadPoolExecutor

    browser = chromium_or_skip()
    shots, profiles = tmp_path_factory.mktemp("screenshots"), tmp_path_factory.mktemp("chromium-profiles")

    def one(page):
        shot = shots / f"{page.replace('/', '_')}.png"
        return page, (_render(browser, built_book / f"{page}.html", shot, profiles / shot.stem), shot)

    with ThreadPoolExecutor(max_workers=2) as pool:
        return dict(pool.map(one, PAGES))


@pytest.mark.parametrize("page", PAGES)
def test_every_page_renders_in_chromium_with_its_banner_above_its_tables_and_figures(rendered, page):
    """From Chromium's layout, not the HTML's order: a page whose source has figures shows them (every image
    loaded), and a model chapter's weights banner sits above its first table and its first figure."""
    probe, shot = rendered[page]
    assert isinstance(probe, dict), f"{page}: {probe}"
    pixels = np.asarray(Image.open(shot).convert("L"), dtype=np.float32)
    assert pixels.std() > 10 and (pixels < 200).mean() > 0.01, f"{page}: the rendered page is blank ({shot})"
    assert probe["shown"] == probe["images"], f"{page}: {probe['images'] - probe['shown']} image(s) did not load"
    figures = _source_figures(page)
    if figures:
        assert probe["shown"] >= 1, f"{page}: its source has {figures} figure(s), the rendered page shows none ({shot})"
    if page in BANNER_PAGES:
        banner = probe["banner"]
        assert banner, f"{page}: no weights banner (a warning or note box naming RANDOM WEIGHTS or the weights)"
        for what in ("table", "figure"):
            if probe[what]:
                assert banner["bottom"] <= probe[what]["top"], (
                    f"{page}: the weights banner (y {banner['top']:.0f}-{banner['bottom']:.0f} px) is not above the "
                    f"first {what} (y {probe[what]['top']:.0f} px) ({shot})")


def test_bad_input_page_names_only_tests_that_exist():
    import re

    page = (PROJECT_ROOT / "book" / "bad_input.md").read_text()
    named = set(re.findall(r"`(test_[a-z0-9_]+)`", page))
    sources = "\n".join(p.read_text() for p in (PROJECT_ROOT / "tests").glob("test_*.py"))
    defined = set(re.findall(r"^def (test_[a-z0-9_]+)\(", sources, flags=re.M))
    assert len(named) >= 15 and named <= defined, sorted(named - defined)


@pytest.mark.parametrize("chapter", BANNER_PAGES)
def test_every_chapter_opens_with_the_weights_banner(built_book, chapter):
    html = (built_book / f"{chapter}.html").read_text()
    banner = html.find("RANDOM WEIGHTS")
    first_table, first_figure = html.find("<table"), html.find("<img")
    assert banner != -1, f"{chapter}: no RANDOM WEIGHTS banner"
    assert first_table == -1 or banner < first_table, f"{chapter}: a table comes before the weights banner"
    assert first_figure == -1 or banner < first_figure, f"{chapter}: a figure comes before the weights banner"
    if chapter == "notebooks/t06_cheung":
        assert "RANDOM</strong> Grounding DINO" in html
