"""Tables as the book shows them: per-class tables, seed std apart from bootstrap intervals, the weights box."""


def test_per_class_table_has_every_class_and_no_index(tmp_path):
    import pandas as pd

    from zsad.results import METRIC_COLUMNS
    from zsad.tables import per_class

    rows = [("d", c, "fade", "1-shot", 1, s, "auroc", v, None, None)
            for c, s, v in [("a", 0, 0.5), ("a", 1, 0.7), ("b", 0, 0.9), ("b", 1, 0.9), ("mean", 0, 0.7),
                            ("mean", 1, 0.8)]]
    rows.append(("d", "a", "cheung", "0-shot", 0, 0, "auroc", 0.25, None, None))
    table = per_class(pd.DataFrame(rows, columns=METRIC_COLUMNS), metric_names=("auroc", "pauroc"))
    assert list(table.columns) == ["dataset", "method", "setting", "class", "AUROC"]
    fade = table[table.method == "fade"]
    assert fade["class"].tolist() == ["a", "b", "mean"]
    assert fade["AUROC"].tolist() == ["0.600 ± 0.100 (n=2)", "0.900 ± 0.000 (n=2)", "0.750 ± 0.050 (n=2)"]
    assert table[table.method == "cheung"]["AUROC"].tolist() == ["0.250"]


def test_seed_std_and_bootstrap_intervals_never_share_a_column():
    import pandas as pd

    from zsad.results import METRIC_COLUMNS
    from zsad.tables import format_table, summarise

    rows = [("d", "mean", "fade", "1-shot", 1, s, "auroc", v, v - 0.1, v + 0.1) for s, v in ((0, 0.6), (1, 0.8))]
    rows.append(("d", "mean", "fade", "0-shot", 0, 0, "auroc", 0.5, 0.4, 0.65))
    table = format_table(summarise(pd.DataFrame(rows, columns=METRIC_COLUMNS)), metrics=("auroc",))
    assert list(table.columns) == ["auroc", "auroc 95% CI"]
    assert table.loc[("d", "fade", "1-shot"), "auroc"] == "0.700 ± 0.100 (n=2)"
    assert table.loc[("d", "fade", "1-shot"), "auroc 95% CI"] == "–"
    assert table.loc[("d", "fade", "0-shot"), "auroc"] == "0.500 (1 run)"
    assert table.loc[("d", "fade", "0-shot"), "auroc 95% CI"] == "[0.400, 0.650]"


def test_weights_banner_names_random_weights_and_detector(tmp_path, monkeypatch):
    from zsad.tables import weights_banner

    monkeypatch.delenv("ZSAD_CHECKPOINT", raising=False)
    text = weights_banner(model="zsad-tiny-vit", checkpoint=None, seeds="0")
    assert text.startswith("```{warning}") and "**RANDOM WEIGHTS** (zsad-tiny-vit" in text and "Detector" not in text
    ckpt = tmp_path / "w.pt"
    ckpt.write_bytes(b"abc")
    text = weights_banner(model="ViT-B-16-plus-240", checkpoint=str(ckpt), detector="")
    assert "`w.pt`, sha256 `ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad`" in text
    assert "RANDOM** Grounding DINO" in text and text.startswith("```{warning}")
    assert weights_banner(checkpoint=str(ckpt)).startswith("```{note}")
