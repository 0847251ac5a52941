"""Sphinx configuration of the course's read-only site. Build it with `python tools/site.py`.

The source folder is staged by tools/site.py (build/site/src): the executed theory notebooks, the
student exercise notebooks (never the solutions) and the pages of this folder. Nothing is executed:
the pages show the outputs committed in notebooks/.
"""

project = "Transformer Internals"
author = "the Transformer Internals authors"
copyright = "the Transformer Internals authors, MIT licence"

# sphinx-mathjax-offline (the distribution's module name has hyphens) copies MathJax into _static: math
# renders with no network.
extensions = ["myst_nb", "sphinx-mathjax-offline"]

# The committed outputs are the outputs: never run a notebook while building the site.
nb_execution_mode = "off"
# Widgets have no saved state and no kernel here: show their plain-text form instead of an empty
# widget view (each exploration has a static figure in the cell before it).
nb_mime_priority_overrides = [("html", "application/vnd.jupyter.widget-view+json", None)]
myst_enable_extensions = ["dollarmath", "amsmath"]
myst_heading_anchors = 2
suppress_warnings = ["mystnb.unknown_mime_type"]

# _downloads_src: the unmodified exercise notebooks (tools/site.py), downloads rather than pages
exclude_patterns = ["_build", "**.ipynb_checkpoints", "_downloads_src"]
html_theme = "sphinx_book_theme"
html_title = "Transformer Internals"
html_theme_options = {
    "show_toc_level": 2,
    "use_download_button": False,
    "use_fullscreen_button": False,
    "use_repository_button": False,
}
html_last_updated_fmt = None
html_show_sourcelink = False
html_copy_source = False
