"""The paper-scale study checks its files in seconds and names what is missing before any compute."""
import time

from zsad.cli import main
from zsad.preset import check_study, preset_parameters, token_bytes_per_image


def test_study_without_weights_fails_in_seconds_naming_the_variable(monkeypatch, tmp_path, capsys):
    for env in ("ZSAD_CHECKPOINT", "ZSAD_MVTEC_ROOT", "ZSAD_VISA_ROOT", "ZSAD_CNN_CHECKPOINT"):
        monkeypatch.delenv(env, raising=False)
    start = time.monotonic()
    assert main(["study", "run", "--out", str(tmp_path / "s")]) == 2
    err = capsys.readouterr()
    assert time.monotonic() - start < 20
    assert "$ZSAD_CHECKPOINT" in err.err and "the mvtec root" in err.err and "the visa root" in err.err
    assert "RANDOM: PatchCore rows" in err.out and not (tmp_path / "s").exists()


def test_check_counts_the_datasets_and_projects_the_cost(synth_root, tmp_path, monkeypatch):
    ckpt = tmp_path / "clip.pt"
    ckpt.write_bytes(b"x")
    monkeypatch.delenv("ZSAD_CNN_CHECKPOINT", raising=False)
    check = check_study(checkpoint=ckpt, mvtec_root=synth_root, visa_root=tmp_path / "no_visa")
    assert check.counts["mvtec"] == (2, 2 * (4 + 4 * 3), 2 * 8)
    assert any("the visa root" in m and "no_visa" in m and "not found" in m for m in check.missing)
    report = check.report()
    assert "32 test images" in report and "TFLOP" in report and "GB" in report
    # the cache per image at ViT-B-16-plus-240: (226 + 785 + 3137) tokens x 640 x 4 bytes x 2 streams
    assert token_bytes_per_image() == 4148 * 640 * 4 * 2


def test_paper_preset_is_the_papers_setting():
    p = preset_parameters("paper")
    assert p["model"] == "ViT-B-16-plus-240" and p["datasets"] == "mvtec,visa" and p["max_images"] == 0
