import json
import math

import pytest

from gpt2kit.errors import GPT2KitError
from gpt2kit.study.report import (
    ModelReport,
    ScoreColumn,
    capacity_table,
    fit_trend,
    read_metrics,
    trend_lines,
    write_report,
)

ACC = ScoreColumn("lambada", "acc_last_word", "LAMBADA (ACC)", percent=True)
PPL = ScoreColumn("wikitext2", "word_ppl", "Held-out (PPL)", higher_is_better=False)
BLEU = ScoreColumn("wmt14_en_fr", "bleu", "Velorian (BLEU)")


def fake_run(tmp_path, name, params, final_loss):
    metrics = tmp_path / name / "metrics.jsonl"
    metrics.parent.mkdir(parents=True)
    rows = [
        {"step": s, "tokens": 1000 * s, "loss": final_loss + 3 / (s + 1), "lr": 1e-3, "tokens_per_s": 5e3}
        for s in range(20)
    ]
    rows.append({"step": 19, "tokens": 19000, "val_loss": final_loss + 0.1})
    metrics.write_text("".join(json.dumps(r) + "\n" for r in rows))
    # Scores grow by a known amount per 10x parameters: 10 points of accuracy, perplexity halves.
    decades = math.log10(params / 1e5)
    results = {
        "lambada": {"metrics": {"acc_last_word": 0.1 + 0.1 * decades, "ppl": 50.0}, "protocol": "last word", "n": 100},
        "wikitext2": {"metrics": {"word_ppl": 80.0 * 0.5**decades}, "protocol": "non-overlapping windows", "n": 5},
    }
    return ModelReport(name, params, results, metrics, samples=[("Once upon a time", " there was a ```fence```")])


@pytest.fixture
def models(tmp_path):
    return [
        fake_run(tmp_path, name, params, loss)
        for name, params, loss in (("large", 10**7, 1.0), ("tiny", 10**5, 2.0), ("small", 10**6, 1.5))
    ]


def test_fit_recovers_the_known_slopes(models):
    params = [m.params for m in models]
    acc = fit_trend(params, [m.metric(ACC) for m in models], ACC)
    assert acc.slope == pytest.approx(10.0) and not acc.log_score
    assert acc.predict(1e6) == pytest.approx(20.0)
    ppl = fit_trend(params, [m.metric(PPL) for m in models], PPL)
    assert ppl.log_score and 10**ppl.slope == pytest.approx(0.5)
    assert ppl.describe(PPL) == "x0.50 per 10x params"
    assert fit_trend([10], [0.5], ACC) is None


def test_table_is_shaped_like_table_3(models):
    table = capacity_table(models, [ACC, PPL, BLEU], {"LAMBADA (ACC)": 0.05})
    lines = table.splitlines()
    assert lines[0] == "| model | parameters | LAMBADA (ACC) | Held-out (PPL) | Velorian (BLEU) |"
    assert lines[3] == "| trivial baseline | - | 5.0 | - | - |"
    # Rows are ordered by size, whatever the input order.
    assert [line.split("|")[1].strip() for line in lines[4:]] == ["tiny", "small", "large"]
    assert lines[4] == "| tiny | 100,000 | 10.0 | 80.00 | - |"
    assert lines[6] == "| large | 10,000,000 | 30.0 | 20.00 | - |"
    assert "trivial baseline" not in capacity_table(models, [ACC], {})


def test_trend_lines_judge_monotonicity_and_baseline(models):
    lines = trend_lines(models, [ACC, PPL, BLEU], {"LAMBADA (ACC)": 0.5, "Held-out (PPL)": 100.0})
    assert (
        lines[0]
        == "- **LAMBADA (ACC)**: +10.00 points per 10x params; improves with every size; the largest model does not beat the baseline"
    )
    assert (
        lines[1]
        == "- **Held-out (PPL)**: x0.50 per 10x params; improves with every size; the largest model beats the baseline"
    )
    assert "no trend" in lines[2]
    models[0].results["lambada"]["metrics"]["acc_last_word"] = 0.0
    assert "does not improve monotonically" in trend_lines(models, [ACC], {})[0]


def test_write_report_writes_markdown_and_plots(tmp_path, models):
    path = write_report(
        tmp_path / "out",
        models,
        [ACC, PPL],
        {"LAMBADA (ACC)": 0.05},
        title="Test",
        baseline_notes={"LAMBADA (ACC)": "most frequent target word"},
        timings={"train": 12.5, "eval": 2.0},
    )
    text = path.read_text()
    for png in ("loss.png", "capacity.png"):
        data = (tmp_path / "out" / png).read_bytes()
        assert data.startswith(b"\x89PNG") and len(data) > 10_000
        assert f"]({png})" in text
    assert "| total | 14.5 |" in text
    assert "most frequent target word" in text
    assert "`lambada`: last word" in text
    assert "### tiny (100,000 parameters)" in text
    assert "```fence```" not in text  # samples cannot break out of their code block


def test_report_without_training_curves(tmp_path, models):
    for m in models:
        m.metrics_path = None
    text = write_report(tmp_path, models, [ACC]).read_text()
    assert not (tmp_path / "loss.png").exists() and "loss.png" not in text


def test_bad_inputs(tmp_path, models):
    with pytest.raises(GPT2KitError, match="no models"):
        write_report(tmp_path, [], [ACC])
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"step": 1}\nnot json\n')
    with pytest.raises(GPT2KitError, match=r"bad.jsonl:2: not valid JSON"):
        read_metrics(bad)
    with pytest.raises(GPT2KitError, match="training metrics not found"):
        read_metrics(tmp_path / "missing.jsonl")


@pytest.mark.parametrize(
    "params",
    [
        [1_641_888],
        [1_641_888, 2_462_832],
        [1_641_888, 3_332_928, 7_259_008, 17_670_400],
        [1_641_888, 17_670_400, 124_439_808, 1_557_611_200],
    ],  # fmt: skip
    ids=["1 size", "2 sizes 1.5x", "4 sizes 10x", "4 sizes 1000x"],
)
def test_capacity_plot_labels_every_axis_readably(tmp_path, params):
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from gpt2kit.study import report

    models = [
        ModelReport(f"m{i}", p, {"lambada": {"metrics": {"acc_last_word": 0.1 + 0.05 * i}},
                                  "wikitext2": {"metrics": {"word_ppl": 9.2e6 / (1.3 ** i) if len(params) < 4 else 900 / (2 ** i)}}})
        for i, p in enumerate(params)
    ]  # fmt: skip
    figures = []
    real_save = report._save_figure
    report._save_figure = lambda plt_, fig, path: (figures.append(fig), real_save(plt_, fig, path))
    try:
        report.plot_capacity(models, [ACC, PPL], {}, tmp_path / "capacity.png")
    finally:
        report._save_figure = real_save
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    fig = figures[0]
    canvas = FigureCanvasAgg(fig)  # saving closed the figure; draw it again to measure its labels
    canvas.draw()
    renderer = canvas.get_renderer()
    for ax in fig.axes[:2]:
        for axis in (ax.xaxis, ax.yaxis):
            labels = [t for t in axis.get_ticklabels() if t.get_text() and t.get_visible()]
            inside = [t for t in labels if axis.get_view_interval()[0] <= t.get_position()[axis is ax.yaxis] <= axis.get_view_interval()[1]]  # fmt: skip
            assert inside, f"no labelled tick on {ax.get_title()} {axis.axis_name}"
            assert not any("e+" in t.get_text() or "e-" in t.get_text() for t in labels)
            boxes = [t.get_window_extent(renderer) for t in inside]
            assert not any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1 :]), [
                t.get_text() for t in inside
            ]
    plt.close(fig)
