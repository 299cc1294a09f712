"""Reports render from the package's Jinja2 templates: HTML is escaped, Markdown is not, and a missing
value is an error rather than an empty cell."""

import jinja2
import pytest

from megatron_utils.core.templates import render

CONTEXT = {"facts": [("Index", "<script>alert(1)</script> & co")], "columns": ["group", "auc"],
           "rows": [["overall", "0.7130"]], "figures": ["roc.png"], "missing": {"a/b": "no face"},
           "model_json": "{}", "preprocessing_json": "{}"}


def test_html_report_escapes_and_markdown_keeps_text():
    page = render("report.html", **CONTEXT)
    assert "&lt;script&gt;alert(1)&lt;/script&gt; &amp; co" in page and "<script>" not in page
    assert "<td>overall</td><td>0.7130</td>" in page and "<code>a/b</code>: no face" in page
    text = render("report.md", **CONTEXT)
    assert "- **Index:** <script>alert(1)</script> & co" in text
    assert "| group | auc |\n|---|---|\n| overall | 0.7130 |" in text and "- `a/b`: no face" in text


def test_a_missing_value_is_an_error():
    with pytest.raises(jinja2.UndefinedError):
        render("report.md", **{k: v for k, v in CONTEXT.items() if k != "rows"})
