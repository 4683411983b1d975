"""Tests of analysis.plots: figure files and the paper's comparison groups."""

import math

import pytest

from analysis import plots

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def model(name, means, family="asr", verdict="falls", boundary=None, **tags):
    rows = [
        {"layer": str(i + 1), "index": i + 1, "mean_mi": m, "ci_low": m - 0.1, "ci_high": m + 0.1}
        for i, m in enumerate(means)
    ]
    tags["family"] = family
    return {"name": name, "rows": rows, "verdict": verdict, "tags": tags, "boundary": boundary}


def test_plot_curves_writes_png_and_pdf(tmp_path):
    curves = [
        model("dec", [2.0, 1.0, 0.5, 1.5], decoder=True, encoder="conbimamba"),
        # Non-positive and NaN means are drawn at the floor, not dropped.
        model("ctc", [1.0, 0.2, -0.05, math.nan], decoder=False, encoder="conbimamba"),
        model("up+conformer", [3.0, 2.0, 1.0, 0.8, 2.5, 3.0], family="upstream+downstream", boundary=3),
    ]
    written = plots.plot_curves(curves, tmp_path / "sub" / "fig", title="t")
    assert [p.name for p in written] == ["fig.png", "fig.pdf"]
    png, pdf = written
    assert png.read_bytes()[:8] == PNG_MAGIC and png.stat().st_size > 5000
    assert pdf.read_bytes()[:5] == b"%PDF-"
    assert not list(tmp_path.rglob("*.tmp*"))
    single = plots.plot_model(curves[0], tmp_path, "one")
    assert all(p.stat().st_size > 0 for p in single)


def test_plot_curves_rejects_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="at least one model"):
        plots.plot_curves([], tmp_path / "x")
    with pytest.raises(ValueError, match="floor"):
        plots.plot_curves([model("a", [1.0])], tmp_path / "x", floor=0.0)


def names(groups):
    return {name: sorted(m["name"] for m in members) for name, _, members in groups}


def test_comparisons_follow_the_paper_figures():
    models = [
        model("asr_dec", [1, 2, 3], decoder=True, encoder="conbimamba"),
        model("asr_ctc", [1, 2, 3], decoder=False, encoder="conbimamba"),
        model("asr_conformer_ctc", [1, 2, 3], decoder=False, encoder="conformer"),  # no partner
        model("ssl_it2_L6", [1, 2, 3], family="ssl", label_layer=6),
        model("ssl_it2_L9", [1, 2, 3], family="ssl", label_layer=9),
        model("ssl_it1", [1, 2, 3], family="ssl"),
        model("ft_L6", [1, 2, 3], family="upstream", label_layer=6, pretrained="ssl_mamba_L6",
              pretrained_encoder="conbimamba"),
        model("ft_L9", [1, 2, 3], family="upstream", label_layer=9, pretrained="ssl_mamba_L9",
              pretrained_encoder="conbimamba"),
        model("ft_hubert_L6", [1, 2, 3], family="upstream", label_layer=6, pretrained="ssl_hubert_L6",
              pretrained_encoder="transformer"),
        model("conf_L6", [1, 2, 3], family="upstream+downstream", label_layer=6, pretrained="ssl_mamba_L6"),
        model("ssamba_tiny", [1, 2, 3], family="ssamba", size="tiny"),
        model("ssamba_base", [1, 2, 3], family="ssamba", size="base"),
    ]
    groups = names(plots.comparisons(models))
    assert groups == {
        "decoder_conbimamba": ["asr_ctc", "asr_dec"],
        "label_layer_ssl": ["ssl_it2_L6", "ssl_it2_L9"],
        "label_layer_upstream_conbimamba": ["ft_L6", "ft_L9"],
        "downstream_ssl_mamba_L6": ["conf_L6", "ft_L6"],
        "ssamba_size": ["ssamba_base", "ssamba_tiny"],
    }
    # One encoder type only: the figure is just "decoder"; a lone side gives no figure.
    assert names(plots.comparisons(models[:2])) == {"decoder": ["asr_ctc", "asr_dec"]}
    assert plots.comparisons([models[0], models[10]]) == []
    # Without the pretrained model's name, the label layer pairs them.
    by_layer = [model("ft", [1, 2], family="upstream", label_layer=9),
                model("conf", [1, 2], family="upstream+downstream", label_layer=9)]
    assert names(plots.comparisons(by_layer)) == {"downstream_L9": ["conf", "ft"]}
    # Without label layers the downstream comparison takes every model of both sides.
    plain = [model("ft", [1, 2], family="upstream"), model("conf", [1, 2], family="upstream+downstream")]
    assert names(plots.comparisons(plain)) == {"downstream": ["conf", "ft"]}
