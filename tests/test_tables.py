"""Tables as the book shows them: per-class tables, seed std apart from bootstrap intervals, the weights box, and the
papers' names for methods, settings and datasets."""


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
    assert table.method.tolist() == ["FADE"] * 3 + ["Cheung et al. (full)"]  # the papers' names, FADE first
    fade = table[table.method == "FADE"]
    assert fade["class"].tolist() == ["a", "b", "mean"]
    assert fade["AUROC"].tolist() == ["0.600 ± 0.100 (n=2)", "0.900 ± 0.000 (n=2)", "0.750 ± 0.050 (n=2)"]
    assert table[table.method == "Cheung et al. (full)"]["AUROC"].tolist() == ["0.250"]


def test_seed_std_and_bootstrap_intervals_never_share_a_column():
    import pandas as pd

    from zsad.results import METRIC_COLUMNS
    from zsad.tables import format_table, summarise

    rows = [("d", "mean", "fade", "1-shot", 1, s, "auroc", v, v - 0.1, v + 0.1) for s, v in ((0, 0.6), (1, 0.8))]
    rows.append(("d", "mean", "fade", "0-shot", 0, 0, "auroc", 0.5, 0.4, 0.65))
    table = format_table(summarise(pd.DataFrame(rows, columns=METRIC_COLUMNS)), metrics=("auroc",))
    assert list(table.columns) == ["AUROC", "AUROC 95% CI"]
    assert table.loc[("d", "FADE", "1-shot"), "AUROC"] == "0.700 ± 0.100 (n=2)"
    assert table.loc[("d", "FADE", "1-shot"), "AUROC 95% CI"] == "–"
    assert table.loc[("d", "FADE", "0-shot"), "AUROC"] == "0.500 (1 run)"
    assert table.loc[("d", "FADE", "0-shot"), "AUROC 95% CI"] == "[0.400, 0.650]"


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


def test_every_registered_method_has_the_papers_name():
    from zsad.study import METHODS
    from zsad.tables import METHOD_LABELS, method_label

    assert set(METHODS) <= set(METHOD_LABELS), sorted(set(METHODS) - set(METHOD_LABELS))
    assert [method_label(m) for m in ("fade", "patchcore", "cheung_no_prompt_generation", "musc")] == [
        "FADE", "PatchCore", "Cheung et al. w/o prompt generation", "MuSc"]
    assert (method_label("winclip", 0), method_label("winclip", 1), method_label("winclip")) == (
        "WinCLIP", "WinCLIP+", "WinCLIP")
    assert method_label("not_a_method", 2) == "not_a_method"


def test_settings_and_datasets_read_as_words():
    from zsad.tables import dataset_label, setting_label

    assert [setting_label(s) for s in ("1-shot", "0-shot language gem", "1-shot vision clip", "0-shot winclip prompts",
                                       "0-shot winclip + llm_generic_seed3", "0-shot llm_generic_seed0 only",
                                       "4-shot vision only", "0-shot object, 3 random words",
                                       "0-shot class names, 3 random words", "2-shot multi-scale",
                                       "0-shot something new")] == [
        "1-shot", "0-shot, language guidance, GEM tokens", "1-shot, vision guidance, CLIP tokens",
        "0-shot, WinCLIP prompts", "0-shot, WinCLIP + LLM prompts (seed 3)", "0-shot, LLM prompts (seed 0) only",
        "4-shot, vision guidance only", '0-shot, "object", 3 random words', "0-shot, class name, 3 random words",
        "2-shot, multi-scale", "0-shot, something new"]
    assert [dataset_label(d) for d in ("mvtec", "visa", "magnetic_tile", "folder")] == [
        "MVTec-AD", "VisA", "magnetic tile", "folder"]


def test_chapter_tables_list_rows_in_the_papers_order():
    import pandas as pd

    from zsad.results import METRIC_COLUMNS
    from zsad.tables import format_table, summarise

    keys = [("synthetic", "patchcore", 1), ("synthetic", "winclip", 1), ("synthetic", "fade", 4),
            ("synthetic", "winclip", 0), ("mvtec", "cheung", 0), ("synthetic", "fade", 0)]
    rows = [(d, "mean", m, f"{k}-shot", k, 0, "auroc", 0.5, 0.4, 0.6) for d, m, k in keys]
    table = format_table(summarise(pd.DataFrame(rows, columns=METRIC_COLUMNS)), metrics=("auroc",))
    assert table.index.tolist() == [("MVTec-AD", "Cheung et al. (full)", "0-shot"), ("synthetic", "FADE", "0-shot"),
                                    ("synthetic", "FADE", "4-shot"), ("synthetic", "WinCLIP", "0-shot"),
                                    ("synthetic", "WinCLIP+", "1-shot"), ("synthetic", "PatchCore", "1-shot")]


def test_results_provenances_read_the_run_folders_the_appendix_shows(tmp_path):
    import pandas as pd
    import pytest

    from zsad.results import METRIC_COLUMNS, provenance, write_run
    from zsad.tables import results_provenances, weights_note

    metrics = pd.DataFrame([("d", "mean", "fade", "0-shot", 0, 0, "auroc", 0.5, None, None)], columns=METRIC_COLUMNS)
    pred = {"paths": ["a.png"], "classes": ["a"], "labels": [1], "scores": [0.5], "masks": [[[True]]],
            "maps": [[[0.5]]]}
    for study, weights in (("t_random", {"model": "tiny", "random_weights": True}),
                           ("t_real", {"model": "ViT-B", "random_weights": False, "checkpoint_sha256": "ab" * 32})):
        write_run(tmp_path / study / "d" / "run", metrics, pred, provenance({}, extra={"weights": weights}))
    assert len(results_provenances(tmp_path)) == 2 and len(results_provenances(tmp_path, "t_real,")) == 1
    assert weights_note(results_provenances(tmp_path, "t_real")) == "```{note}\nWeights: ViT-B: abababababab\n```"
    both = weights_note(results_provenances(tmp_path))
    assert both.startswith("```{warning}\n**RANDOM WEIGHTS.**") and "ViT-B: abababababab, tiny: RANDOM" in both
    with pytest.raises(ValueError, match="no finished run folders"):
        results_provenances(tmp_path, ["t_other"])


def test_weights_label_names_random_weights_or_the_checkpoint_files():
    from zsad.tables import weights_label

    real = {"model": "ViT-B-16-plus-240", "random_weights": False, "checkpoint": "/models/vit.pt",
            "checkpoint_sha256": "cd" * 32}
    cnn = {"model": "wide_resnet50_2", "random_weights": False, "checkpoint_sha256": "ef" * 32}
    assert weights_label({"a": {"weights": real}, "b": {"weights": cnn}}) == (
        "ViT-B-16-plus-240 (vit.pt), wide_resnet50_2 (efefefefefef)")
    assert weights_label({"a": {"weights": real}, "b": {"weights": {"model": "m", "random_weights": True}}}) == (
        "RANDOM WEIGHTS")
