"""Sphinx configuration of the sksae documentation.

Build with ``make html`` (or ``sphinx-build -W -b html . _build/html``): warnings are
errors. The gallery executes every ``examples/plot_*.py``; the language-model example
only where the ``interpret`` extra is installed (it is shown, not run, elsewhere).
"""

import importlib.util
from pathlib import Path

import sksae

DOC_DIR = Path(__file__).resolve().parent
EXAMPLES_DIR = DOC_DIR.parent / "examples"

# -- Project ---------------------------------------------------------------------------

project = "sksae"
author = "sksae developers"
copyright = "sksae developers"
version = sksae.__version__
release = sksae.__version__

# -- General ---------------------------------------------------------------------------

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.mathjax",
    "numpydoc",
    "sphinx_gallery.gen_gallery",
]

templates_path = ["_templates"]
exclude_patterns = ["_build", "_templates", "Thumbs.db", ".DS_Store"]
root_doc = "index"
default_role = "literal"

autosummary_generate = True

numpydoc_show_class_members = False
numpydoc_class_members_toctree = False

# -- sphinx-gallery --------------------------------------------------------------------

sphinx_gallery_conf = {
    "examples_dirs": "../examples",
    "gallery_dirs": "auto_examples",
    "filename_pattern": (
        r"/plot_"
        if importlib.util.find_spec("all_minilm_l6_v2") and importlib.util.find_spec("transformers")
        else r"/plot_(?!language_model)"
    ),
    "download_all_examples": False,
    "remove_config_comments": True,
    "within_subsection_order": "FileNameSortKey",
}


# -- HTML ------------------------------------------------------------------------------

html_theme = "pydata_sphinx_theme"
html_title = f"sksae {release}"
html_theme_options = {
    "navigation_with_keys": False,
    "show_prev_next": False,
}
html_static_path = []
