"""Sphinx configuration of the lxt-fx documentation (``make docs`` → ``docs/_build/html``).

Offline by construction: no intersphinx, no remote images or fonts; every ```python block of every page is
run by ``_ext/run_blocks.py`` and its outputs are embedded; ``_ext/public_docstrings.py`` fails the build on
a public name without a docstring. Built with ``-W``: any warning is an error.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "_ext"))
sys.path.insert(0, str(HERE.parent))  # the checkout's lxt_fx, also without an editable install
for key, value in {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}.items():
    os.environ.setdefault(key, value)

project = "lxt-fx"
author = "the lxt-fx authors"
copyright = "the lxt-fx authors, BSD-3-Clause"  # noqa: A001 (Sphinx's name)
release = version = "0.1.0"

extensions = [
    "myst_parser",
    "sphinx_design",
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "sphinx_autodoc_typehints",
    "sphinx-mathjax-offline",
    "run_blocks",
    "public_docstrings",
]

source_suffix = {".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "_ext", "Thumbs.db", ".DS_Store"]
# lxt_fx.check is a callable module (``lxt_fx.check(model, inputs)``); sphinx-autodoc-typehints cannot read a
# single signature from a module's source and says so. That is the only warning silenced.
suppress_warnings = ["sphinx_autodoc_typehints.multiple_ast_nodes"]

# MyST: ```{directive} fences, :::{card} colons, {math} roles; heading anchors for [](#section) links.
myst_enable_extensions = ["colon_fence", "deflist", "attrs_inline"]
myst_heading_anchors = 3

# The API reference: the modules the docstring check covers (a new package: add it here and in api/).
api_modules = ["lxt_fx", "lxt_fx.tracing", "lxt_fx.composites", "lxt_fx.rules", "lxt_fx.functional",
               "lxt_fx.modules", "lxt_fx.targets", "lxt_fx.check", "lxt_fx.evaluate", "lxt_fx.render",
               "lxt_fx.features", "lxt_fx.dataset", "lxt_fx.generation", "lxt_fx.captum",
               "lxt_fx.spans", "lxt_fx.retrieval", "lxt_fx.reasoning"]
autodoc_default_options = {"members": True, "show-inheritance": True, "member-order": "bysource"}
autodoc_typehints = "description"
autodoc_class_signature = "mixed"
autodoc_inherit_docstrings = True
typehints_fully_qualified = False
always_document_param_types = False
typehints_document_rtype = True
typehints_document_rtype_none = False
napoleon_google_docstring = True
napoleon_numpy_docstring = False

# MathJax from the sphinx-mathjax-offline package (copied into _static/mathjax at the end of a build): no CDN.
mathjax_path = "mathjax/tex-chtml.js"  # shipped by sphinx-mathjax-offline, copied into _static

html_theme = "furo"
html_title = "lxt-fx"
html_static_path = ["_static"]
html_css_files = ["lxt.css"]
html_theme_options = {"sidebar_hide_name": False, "navigation_with_keys": True}
pygments_style = "friendly"
pygments_dark_style = "monokai"
