"""MkDocs hook: Sphinx roles in docstrings (``:class:`aion_core.AionConfig```) as links.

The docstrings are numpy style and name objects with Sphinx roles; mkdocstrings renders them
as ``:class:<code>target</code>``. This turns each into an optional cross-reference, which
mkdocs-autorefs links when the target is documented on the site (a full dotted path) and
leaves as plain code otherwise. A leading ``~`` shows the last component only, as in Sphinx.
"""

import re

_ROLE = re.compile(r":(?:class|func|meth|attr|mod|data|exc|obj):<code>(~?)([\w.]+)</code>")


def _autoref(match: re.Match) -> str:
    short, target = match.groups()
    title = target.rsplit(".", 1)[-1] if short else target
    return f'<autoref identifier="{target}" optional><code>{title}</code></autoref>'


def on_page_content(html, **kwargs):
    return _ROLE.sub(_autoref, html)
