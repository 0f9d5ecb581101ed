"""The documentation site (docs/, ``make docs``): the two extensions of ours, a build of the site's fast pages
with warnings as errors, and headless-Chromium screenshots of the full build.

The full build runs SmolLM2 on several pages (minutes); here a subset — Rules, Drop-in replacements and one
API page, whose blocks run in well under a second — is built into a temporary folder with the real
``conf.py``, so the extensions, autodoc, the docstring check and the theme are all exercised.
"""

from __future__ import annotations

import importlib
import os
import re
import shutil
import subprocess
import sys
import textwrap
import types
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
sys.path.insert(0, str(DOCS / "_ext"))
CHROMIUM = "/usr/bin/chromium"

pytest.importorskip("sphinx", reason="the docs extra is not installed: pip install -c constraints.txt -e '.[docs]'")
run_blocks = importlib.import_module("run_blocks")
public_docstrings = importlib.import_module("public_docstrings")


# ---- run_blocks: execution, namespaces, outputs, failures ---------------------------------------------------

PAGE = textwrap.dedent('''\
    # A page

    ```python
    x = 20 + 1
    print("x is", x)
    ```

    ```python continuation
    class Shown:
        def _repr_html_(self):
            return "<b>bold " + str(x * 2) + "</b>"

    Shown()
    ```

    ```python
    y = 3
    y * 2
    ```

    ```shell
    echo not run
    ```
    ''')


def test_blocks_run_in_order_and_their_outputs_follow_them() -> None:
    out = run_blocks.execute_page(PAGE, "page", "page.md")
    stdout = out.index("x is 21")
    html = out.index("<b>bold 42</b>")                       # the continuation saw x
    value = out.index("\n6\n")                                # the repr of a last expression
    assert out.index("print(") < stdout < out.index("class Shown") < html < out.index("y = 3") < value
    assert "{raw} html" in out and out.count("{code-block} text") == 2
    assert "echo not run" in out and "not run\n```{code-block}" not in out   # a shell block is shown, not run


def test_a_block_without_continuation_starts_a_fresh_namespace_like_test_docs() -> None:
    page = "```python\nsecret = 1\n```\n\ntext\n\n```python\nprint(secret)\n```\n"
    with pytest.raises(run_blocks.BlockError, match=r"page\.md:7: .*NameError: name 'secret'"):
        run_blocks.execute_page(page, "page", "page.md")


def test_a_failing_block_names_the_page_and_the_line() -> None:
    page = "# T\n\n```python\nimport math\n\nmath.sqrt(-1)\n```\n"
    with pytest.raises(run_blocks.BlockError) as err:
        run_blocks.execute_page(page, "broken", "docs/broken.md")
    message = str(err.value)
    assert "docs/broken.md:3:" in message and "ValueError: math domain error" in message
    assert 'docs/broken.md", line 6' in message               # the traceback points at the page's own line


def test_fences_longer_than_the_output_keep_backticks_inside() -> None:
    assert "````{code-block} text" in run_blocks.fence("a ``` b")


# ---- public_docstrings -------------------------------------------------------------------------------------


def test_public_names_without_docstrings_are_listed() -> None:
    mod = types.ModuleType("lxt_fx_fake_docs")

    class Base:
        def run(self) -> None:
            """Documented here."""

    class Thing(Base):
        """Documented class."""

        def run(self) -> None:       # an override of a documented method: autodoc shows the base's docstring
            pass

        def bare(self) -> None:
            pass

        @property
        def size(self) -> int:
            return 1

        def _private(self) -> None:
            pass

    def documented() -> None:
        """Yes."""

    def undocumented() -> None:
        pass

    for obj in (Thing, Base, documented, undocumented):
        obj.__module__ = "lxt_fx.fake"
    mod.Thing, mod.documented, mod.undocumented = Thing, documented, undocumented
    mod.__all__ = ["Thing", "documented", "undocumented", "CONSTANT"]
    mod.CONSTANT = 3
    sys.modules["lxt_fx_fake_docs"] = mod
    try:
        found = [line.split(" ")[0] for line in public_docstrings.missing("lxt_fx_fake_docs")]
    finally:
        del sys.modules["lxt_fx_fake_docs"]
    assert found == ["lxt_fx_fake_docs.Thing.bare", "lxt_fx_fake_docs.Thing.size", "lxt_fx_fake_docs.undocumented"]


def test_every_documented_module_has_its_docstrings() -> None:
    conf: dict = {"__file__": str(DOCS / "conf.py")}
    exec(compile((DOCS / "conf.py").read_text(), str(DOCS / "conf.py"), "exec"), conf)
    assert {"lxt_fx", "lxt_fx.rules", "lxt_fx.functional", "lxt_fx.modules"} <= set(conf["api_modules"])
    assert [line for m in conf["api_modules"] for line in public_docstrings.missing(m)] == []


# ---- a build of the fast pages ----------------------------------------------------------------------------


def _subset(tmp: Path) -> Path:
    src = tmp / "src"
    src.mkdir()
    shutil.copy(DOCS / "conf.py", src / "conf.py")
    for folder in ("_ext", "_static"):
        shutil.copytree(DOCS / folder, src / folder, ignore=shutil.ignore_patterns("__pycache__"))
    for page in ("rules.md", "drop-in.md"):
        shutil.copy(DOCS / page, src / page)
    (src / "api").mkdir()
    shutil.copy(DOCS / "api" / "rules.md", src / "api" / "rules.md")
    (src / "index.md").write_text("# subset\n\n```{toctree}\nrules\ndrop-in\napi/rules\n```\n")
    return src


def test_the_fast_pages_build_with_warnings_as_errors(tmp_path: Path) -> None:
    src, out = _subset(tmp_path), tmp_path / "html"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "sphinx", "-W", "-q", "-b", "html",
                           # links to pages outside the subset (drop-in → debugging) are the one warning let pass
                           "-D", "suppress_warnings=myst.xref_missing,sphinx_autodoc_typehints.multiple_ast_nodes",
                           str(src), str(out)], capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    drop_in = (out / "drop-in.html").read_text()
    assert "mul2: True True" in drop_in and "lxt-output" in drop_in          # executed, output embedded
    rules = (out / "rules.html").read_text()
    errors = [float(e) for e in re.findall(r"max \|GxI − explicit\| = ([0-9.e+-]+)", rules)]
    assert len(errors) == 3 and max(errors) < 1e-12 and 'class="math' in rules   # the printed output, 3 rules
    api = (out / "api" / "rules.html").read_text()
    assert 'id="lxt_fx.rules.SoftmaxDT"' in api and ".. py:" not in api     # autodoc rendered, not raw rST
    assert (out / "_static" / "mathjax" / "tex-chtml.js").is_file()          # MathJax shipped, no CDN
    assert "cdn.jsdelivr" not in rules


# ---- screenshots of the full build ------------------------------------------------------------------------

PAGES = {"landing": "index.html", "quickstart": "quickstart.html", "api-rules": "api/rules.html"}


@pytest.mark.skipif(not Path(CHROMIUM).is_file(), reason="no /usr/bin/chromium (`make docs-browser-test` installs "
                    "the Debian package chromium and runs this test)")
@pytest.mark.skipif(not (DOCS / "_build" / "html" / "index.html").is_file(),
                    reason="the site is not built: run `make docs` first")
def test_chromium_screenshots_of_the_built_site() -> None:
    image = pytest.importorskip("matplotlib.image")
    shots = DOCS / "_build" / "screenshots"
    shots.mkdir(exist_ok=True)
    for name, page in PAGES.items():
        png = shots / f"{name}.png"
        png.unlink(missing_ok=True)
        subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                        "--disable-background-networking", "--disable-component-update", "--disable-sync",
                        "--hide-scrollbars", "--window-size=1280,2000", f"--screenshot={png}",
                        (DOCS / "_build" / "html" / page).as_uri()], capture_output=True, timeout=120, check=False)
        assert png.is_file(), f"Chromium wrote no screenshot of {page}"
        pixels = image.imread(png)
        assert pixels.shape[:2] == (2000, 1280)
        assert pixels[..., :3].std() > 0.05, f"{page} renders as a blank page"
