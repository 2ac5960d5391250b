"""Figures: the gallery's picks and its one colour scale, titles that never overlap, the papers' names in legends."""
import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from PIL import Image  # noqa: E402


def _overlaps(fig):
    """Pairs of (text, text) and (text, axes) whose drawn boxes intersect, among the figure's visible, non-empty
    titles and axis labels; empty when nothing overlaps."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    texts = [t for t in [fig._suptitle] if t is not None]
    for ax in fig.axes:
        texts += [ax.title, ax.xaxis.label, ax.yaxis.label]
    texts = [t for t in texts if t.get_visible() and t.get_text()]
    boxes = [(t.get_text(), t.get_window_extent(renderer)) for t in texts]
    panels = [(f"axes {i}", ax.get_window_extent(renderer)) for i, ax in enumerate(fig.axes) if ax.get_visible()]
    bad = [(a, b) for i, (a, ba) in enumerate(boxes) for b, bb in boxes[i + 1:] if ba.overlaps(bb)]
    return bad + [(a, b) for a, ba in boxes for b, bb in panels if ba.overlaps(bb)]


def _run_folder(tmp_path, maps):
    """A finished run folder of two classes (two defective and one good image each) on 32 px images."""
    from zsad.results import METRIC_COLUMNS, provenance, write_run

    paths, classes, labels = [], [], []
    for cls in ("grain", "weave"):
        for i, label in enumerate((1, 1, 0)):
            rel = f"{cls}/test/{i}.png"
            (tmp_path / "root" / cls / "test").mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.full((32, 32, 3), 40 * i, np.uint8)).save(tmp_path / "root" / rel)
            paths.append(rel)
            classes.append(cls)
            labels.append(label)
    masks = np.zeros(maps.shape, bool)
    masks[[0, 1, 3, 4], 2:4, 2:4] = True
    pred = {"paths": paths, "classes": classes, "labels": labels, "scores": [0.9, 0.2, 0.95, 0.4, 0.4, 0.1],
            "masks": masks, "maps": maps}
    metrics = pd.DataFrame([("synthetic", "mean", "winclip", "1-shot", 1, 0, "auroc", 0.5, None, None)],
                           columns=METRIC_COLUMNS)
    params = {"method": "winclip", "shots": 1, "setting": "1-shot", "dataset": "synthetic",
              "root": str(tmp_path / "root")}
    prov = provenance(params, seed=0, extra={"weights": {"model": "zsad-tiny-vit", "random_weights": True}})
    return write_run(tmp_path / "run", metrics, pred, prov)


def test_gallery_picks_the_highest_and_lowest_scored_defective_image_of_each_class():
    from zsad.figures import gallery_picks

    classes = ["b", "a", "a", "a", "b", "c", "a"]
    labels = [1, 1, 0, 1, 1, 0, 1]
    scores = [0.3, 0.5, 0.99, 0.1, 0.3, 0.7, 0.5]  # a's good image scores highest: it is not a pick
    # a: best is the first of the two 0.5 (index 1), worst 0.1 (index 3); b: a tie, first for both; c: none
    assert gallery_picks(classes, labels, scores) == [("a", 1, 3), ("b", 0, 0), ("c", None, None)]


def test_gallery_draws_every_map_on_one_run_wide_scale_with_a_colourbar(tmp_path):
    from zsad.figures import gallery

    maps = np.linspace(0.0, 1.0, 6 * 8 * 8, dtype=np.float32).reshape(6, 8, 8)
    maps[5] = 3.0  # weave's good image (never shown) holds the run's maximum: the scale is the run's, not the shown
    maps[0, 0, 0] = -1.0
    fig = gallery(_run_folder(tmp_path, maps), size=32)
    drawn = [im for ax in fig.axes for im in ax.get_images() if im.get_cmap().name == "jet"]
    assert len(drawn) == 4  # best and worst of two classes
    assert {im.get_clim() for im in drawn} == {(-1.0, 3.0)}
    bars = [ax for ax in fig.axes if ax.get_label() == "<colorbar>"]
    assert len(bars) == 1 and bars[0].get_ylabel() == "map value, one scale: -1 to 3"
    assert fig._suptitle.get_text() == "WinCLIP+ 1-shot on synthetic · RANDOM WEIGHTS"
    assert fig._suptitle.get_color() == "#b00000"
    scores = sorted(ax.xaxis.label.get_text() for ax in fig.axes if ax.xaxis.label.get_text())
    # grain's good image scores 0.95 but is no pick; weave's two defective images tie at 0.4: the first is both
    assert scores == ["score 0.200", "score 0.400", "score 0.400", "score 0.900"]
    assert [ax.yaxis.label.get_text() for ax in fig.axes if ax.yaxis.label.get_text()][:2] == ["grain", "weave"]
    assert _overlaps(fig) == []
    plt.close(fig)


def test_gallery_refuses_an_image_level_run(tmp_path):
    from zsad.figures import gallery

    with pytest.raises(ValueError, match="image scores only"):
        gallery(_run_folder(tmp_path, np.zeros((6, 1, 1), np.float32)))


def test_example_grid_titles_overlap_nothing(tmp_path):
    from zsad.data.records import ImageRecord
    from zsad.figures import example_grid

    records = []
    for cls in ("grain", "weave"):
        for defect in ("good", "blob", "missing", "scratch"):
            path = tmp_path / f"{cls}_{defect}.png"
            Image.fromarray(np.full((24, 24, 3), 120, np.uint8)).save(path)
            records.append(ImageRecord(path, path.name, cls, "test", int(defect != "good"), defect, None))
    fig = example_grid(records, size=24, title="synthetic")
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert titles == ["good", "blob", "missing", "scratch"] * 2  # good first, then the defect types by name
    assert [ax.get_ylabel() for ax in fig.axes if ax.get_ylabel()] == ["grain", "weave"]
    assert _overlaps(fig) == []
    plt.close(fig)


def _summary():
    from zsad.results import METRIC_COLUMNS
    from zsad.tables import summarise

    rows = []
    for method, shots in (("patchcore", 1), ("winclip", 0), ("winclip", 1), ("fade", 0), ("fade", 1)):
        for seed in (0, 1):
            rows.append(("synthetic", "mean", method, f"{shots}-shot", shots, seed, "auroc", 0.5 + 0.1 * seed,
                         None, None))
    return summarise(pd.DataFrame(rows, columns=METRIC_COLUMNS))


def test_plots_name_methods_as_the_papers_do():
    from zsad.figures import shots_plot, variant_plot

    fig = shots_plot(_summary(), metrics=("auroc",), weights="RANDOM WEIGHTS")
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["FADE", "WinCLIP", "WinCLIP+", "PatchCore"]
    assert fig.axes[0].get_title() == "synthetic: AUROC" and _overlaps(fig) == []
    plt.close(fig)
    fig = variant_plot(_summary(), "auroc")
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == [
        "FADE: 0-shot", "FADE: 1-shot", "WinCLIP: 0-shot", "WinCLIP+: 1-shot", "PatchCore: 1-shot"]
    plt.close(fig)
    one = _summary()
    fig = variant_plot(one[one.method == "fade"], "auroc", weights="RANDOM WEIGHTS")
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == ["0-shot", "1-shot"]
    assert fig._suptitle.get_text() == "FADE · RANDOM WEIGHTS"
    plt.close(fig)


def test_per_class_plot_shows_the_seed_mean_of_every_class_on_one_scale():
    from zsad.figures import per_class_plot
    from zsad.results import METRIC_COLUMNS

    rows = [("synthetic", c, m, f"{k}-shot", k, s, "auroc", v, None, None)
            for c, m, k, s, v in [("weave", "winclip", 1, 0, 0.2), ("weave", "winclip", 1, 1, 0.4),
                                  ("grain", "fade", 0, 0, 0.9), ("weave", "fade", 0, 0, 0.7),
                                  ("mean", "fade", 0, 0, 0.8)]]
    rows.append(("mvtec", "bottle", "fade", "0-shot", 0, 0, "auroc", 1.0, None, None))
    fig = per_class_plot(pd.DataFrame(rows, columns=METRIC_COLUMNS), "auroc", weights="RANDOM WEIGHTS")
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["MVTec-AD: bottle", "synthetic: grain", "synthetic: weave"]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["FADE, 0-shot", "WinCLIP+, 1-shot"]
    grid = ax.get_images()[0].get_array()
    np.testing.assert_allclose(grid.filled(np.nan), [[1.0, np.nan], [0.9, np.nan], [0.7, 0.3]])
    assert ax.get_images()[0].get_clim() == (0.0, 1.0)
    assert fig._suptitle.get_text() == "AUROC per class · RANDOM WEIGHTS" and _overlaps(fig) == []
    plt.close(fig)
