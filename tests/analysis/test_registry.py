"""The law registry: every tool reads the same entries, so a law is added in one place."""

import pytest

from analysis import plots, registry
from analysis.cli import build_parser
from analysis.registry import LAWS, required_columns


def test_every_law_has_a_figure_and_the_cli_offers_it():
    choices = next(a.choices for a in build_parser()._actions if a.dest == "law")
    assert tuple(choices) == tuple(LAWS)
    for law in LAWS.values():
        assert law.plot in plots.PLOTTERS and law.title


def test_columns_follow_the_entry_and_the_bootstrap_unit():
    assert required_columns("power", x="C") == ["C", "loss"]
    assert required_columns("kaplan-ns") == ["N", "S", "loss"]
    assert required_columns("kaplan-ns", bootstrap=True) == ["run", "N", "S", "loss"]
    assert required_columns("envelope") == ["run", "N", "C", "loss"]
    assert required_columns("isoflop", flops_per_token=None) == ["N", "C", "loss", "D"]


def test_unknown_laws_and_options_are_refused():
    with pytest.raises(ValueError, match="unknown law 'cubic'"):
        registry.get("cubic")
    with pytest.raises(TypeError, match="unexpected keyword"):
        registry.fit_law(None, "power", degree=3)
