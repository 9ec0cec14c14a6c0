"""Generated docs are current: the chart README's values table and the API reference."""

from __future__ import annotations

import pytest
from hack import api_reference, chart_readme


def test_the_chart_readme_is_current() -> None:
    assert chart_readme.README.read_text() == chart_readme.render(), "stale: run `make docs`"


def test_the_api_reference_is_current() -> None:
    assert api_reference.OUT.read_text() == api_reference.render(), "stale: run `make crds` (or `make docs`)"


@pytest.mark.parametrize(("values", "want"), [
    pytest.param("a: 1\n", {}, id="no-comment"),
    pytest.param("# -- the a\na: 1\n", {"a": "the a"}, id="top-level"),
    pytest.param("x:\n  # -- first\n  # and more\n  y: 2\n  # plain comment\n  z: 3\n", {"x.y": "first and more"},
                 id="nested-multi-line-plain-ignored"),
    pytest.param("x:\n  # -- stale\n\n  y: 2\nw: 1\n", {}, id="a-blank-line-ends-it"),
])
def test_values_comments(values: str, want: dict[str, str]) -> None:
    assert chart_readme.comments(values) == want


def test_every_value_is_a_row_and_free_form_objects_stay_whole() -> None:
    text = chart_readme.render()
    for key in ("`operator.replicas`", "`agent.affinity`", "`podSecurityContext`", "`tests.image`"):
        assert f"| {key} |" in text
    assert "`agent.affinity.nodeAffinity" not in text
