"""Prompt ensembles: WinCLIP's in code and the readers (zsad.prompts); the seeded LLM ensembles (generation,
clean-up, files, user classes on the fly, CLI: zsad.prompt_generation, zsad.prompt_cli)."""
import argparse
import json
from pathlib import Path

import pytest

from zsad import llm
from zsad import prompt_generation as G
from zsad import prompts as P

DATA = Path(__file__).parent / "data"
FIXTURE = DATA / "prompts_fixture_llm_generic.json"
# How the fixture was made (also recorded inside it; `regenerate_prompt_file` reads it back from there).
FIXTURE_ARGS = dict(recipes=["r2_synonyms"], budget={"target_items": 1, "max_completions": 1, "max_tokens": 40})
FIXTURE_HOWTO = ("python -c \"from zsad import prompt_generation as G; G.write_prompt_file('tests/data/"
                 "prompts_fixture_llm_generic.json', G.generate_ensemble('llm_generic', 0, recipes=['r2_synonyms'], "
                 "budget={'target_items': 1, 'max_completions': 1, 'max_tokens': 40}, progress=False))\"")


# ------------------------------------------------------------------------------------------------ WinCLIP, readers
def test_winclip_ensemble_unchanged():
    p = P.winclip_prompts("metal nut")
    assert len(p["normal"]) == 154 and len(p["abnormal"]) == 88
    assert p["normal"][0] == "a cropped photo of the metal nut" and p["abnormal"][-1].endswith("metal nut with damage "
                                                                                                "for anomaly detection")


def test_read_prompt_file_plain_and_generated_layouts(tmp_path):
    plain = tmp_path / "plain.json"
    plain.write_text(json.dumps({"normal": ["a"], "abnormal": {"prompts": ["b"], "instruction": "x"}}))
    assert P.read_prompt_file(plain) == {"normal": ["a"], "abnormal": ["b"]}
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"normal": ["a"], "abnormal": []}))
    with pytest.raises(ValueError, match="abnormal"):
        P.read_prompt_file(bad)
    with pytest.raises(ValueError, match="not found"):
        P.read_prompt_file(tmp_path / "missing.json")


# ------------------------------------------------------------------------------------------------ clean-up rules
def test_trim_strips_marks_quotes_and_spaces():
    assert G.trim_prompt('  "a  photo of\tan object."  ') == "a photo of an object."
    assert G.trim_prompt("- **a photo of a part**") == "a photo of a part"
    assert G.trim_prompt("12. a photo") == "a photo"


@pytest.mark.parametrize("text, side, contradicts", [
    ("an intact object with no scratches, dents or cracks", "normal", False),
    ("a defect-free surface", "normal", False),
    ("a non-defective part", "normal", False),
    ("it isn't broken at all", "normal", False),
    ("a photo of an object", "normal", False),               # no evidence is fine for a normal prompt
    ("a photo of a cracked object", "normal", True),
    ("a part free of scratches, with a deep crack", "normal", True),  # "with" ends the negation
    ("an object that is not perfect", "normal", True),       # negated normal word
    ("an object in poor shape", "normal", True),
    ("a photo of a damaged object", "abnormal", False),
    ("an object that is not in perfect condition", "abnormal", False),
    ("a photo of an object", "abnormal", True),              # names no defect
    ("a flawless object with a scratch", "abnormal", True),  # says flawless
    ("a damaged object without visible damage", "abnormal", True),
    ("a photo of an object without defects", "abnormal", True),
])
def test_contradiction_rule(text, side, contradicts):
    assert G.contradicts_side(text, side) is contradicts


def test_class_names_are_found_with_variants():
    for text in ("a photo of a bottle", "two Screws", "pcb4 board", "chewing-gum", "a metal  nut", "Hazel nuts",
                 "a wooden part", "the magnetic tile"):
        assert G.mentions_class_name(text), text
    for text in ("a photo of an object", "a nutty surface", "a gridded pattern", "a tiled floor"):
        assert not G.mentions_class_name(text), text


def test_clean_prompts_applies_every_rule_in_order():
    items = ["", "   ", "two words", "word " * 30, "a very long " + "x" * 160, "a photo of <b>an object</b>",
             "a photo of an undamaged object.",   # one of the examples below
             "a clean photo of a bottle", "a photo of a scratched object", "a clean photo of an object.",
             "A clean photo of an  object", "a clean photo of an object", "a clean photo of an object!"]
    kept, dropped = G.clean_prompts(items, "normal", generic=True, examples=["a photo of an undamaged object."])
    assert kept == ["a clean photo of an object.", "a clean photo of an object!"]
    assert [d["rule"] for d in dropped] == ["empty", "empty", "too_short", "too_long", "too_long", "markup",
                                            "example_copy", "class_name", "contradicts_side", "duplicate",
                                            "duplicate"]
    assert all(rule in dict(G.CLEANUP_RULES) for rule in (d["rule"] for d in dropped))
    # the class-name rule is for generic ensembles only
    kept, _ = G.clean_prompts(["a clean photo of a bottle"], "normal", generic=False)
    assert kept == ["a clean photo of a bottle"]
    with pytest.raises(ValueError, match="side"):
        G.clean_prompts([], "good", generic=True)


def test_recipe_examples_pass_their_own_rules():
    for recipe in G.GENERIC_RECIPES.values():
        for side in P.SIDES:
            kept, dropped = G.clean_prompts(recipe[side][1], side, generic=True)
            assert not dropped, dropped
    for cls in G.CLASS_INFO:
        for side, (_, examples) in G._class_recipe_texts(cls).items():
            assert not G.clean_prompts(examples, side, generic=False)[1]


def test_dataset_classes():
    assert len(G.DATASET_CLASSES["mvtec"]) == 15 and len(G.DATASET_CLASSES["visa"]) == 12
    assert set(G.CLASS_INFO) == {c for cs in G.DATASET_CLASSES.values() for c in cs}


def test_parse_list_completion():
    assert G.parse_list_completion(4, " a b c.\n5. d e f.\n", "end_of_list") == ["a b c.", "d e f."]
    assert G.parse_list_completion(4, " a b c.\n5. d e", "max_tokens") == ["a b c."]  # cut last line dropped
    assert G.parse_list_completion(4, " a b c.\n5. d e f.", "eos") == ["a b c.", "d e f."]
    assert G.parse_list_completion(4, " a b c.\nThe end\n6. x y z", "eos") == ["a b c."]


def test_end_of_list_detection():
    assert not llm._ends_list("") and not llm._ends_list("1") and not llm._ends_list(" 12")
    assert not llm._ends_list("12.") and llm._ends_list("The") and llm._ends_list("3a")


# ------------------------------------------------------------------------------------------------ files (fake LLM)
class FakeGenerator:
    """Stands in for the llama.cpp model: canned completions that exercise every rule."""

    def __init__(self, model, n_threads=1):
        self.model, self.n_threads = model, n_threads

    @property
    def settings(self):
        return {"file": self.model.file, "sha256": self.model.sha256, "n_threads": self.n_threads}

    def complete_list(self, prompt, seed, max_tokens):
        normal = "undamaged" in prompt or "defect-free" in prompt
        text = (" a clean photo of an intact part.\n5. a part in perfect shape.\n6. A clean photo of an intact part\n"
                "7. a part with a crack.\n8. a photo of a bottle top.\n" if normal else
                " a photo of a cracked part.\n5. a part with a dent.\n6. a photo of a part.\n7. a broken screw.\n")
        return {"text": text, "finish": "end_of_list", "n_tokens": 30}


@pytest.fixture
def fake_llm(monkeypatch, tmp_path):
    model = tmp_path / "fake.gguf"
    model.write_bytes(b"GGUF fake")
    monkeypatch.setattr(llm, "resolve_model", lambda m=None: llm.ModelInfo(model, "0" * 64))
    monkeypatch.setattr(llm, "Generator", FakeGenerator)
    return model


def test_generic_file_round_trip(fake_llm, tmp_path):
    data = G.generate_ensemble("llm_generic", 3, budget={"target_items": 8, "max_completions": 2}, progress=False)
    assert data["recipes"] == list(G.GENERIC_RECIPES) and len(data["raw_output"]) == 2 * 5 * 2
    # per recipe: 2 completions x 5 items raw; kept: "a clean photo..." (dup across recipes), "a part in perfect shape."
    assert data["normal"]["prompts"] == ["a clean photo of an intact part.", "a part in perfect shape."]
    assert data["abnormal"]["prompts"] == ["a photo of a cracked part.", "a part with a dent."]
    c = data["normal"]["counts"]
    assert c["raw"] == 50 and c["kept"] == 2 and sum(c["dropped_by_rule"].values()) == 48
    assert c["dropped_by_rule"]["class_name"] == 10 and c["by_recipe"]["r1_undamaged"] == {"raw": 10, "kept": 2}
    assert data["counts"] == {"normal": {"raw": 50, "kept": 2}, "abnormal": {"raw": 40, "kept": 2}}
    for key in ("seed", "sampling", "model", "llama_cpp_python", "recipe_text", "budget", "cleanup", "raw_output"):
        assert key in data
    assert data["seed"] == 3 and data["sampling"]["repeat_penalty"] > 1
    path = G.write_prompt_file(tmp_path / "sub" / "g.json", data)
    text = path.read_text()
    assert text.endswith("}\n") and text == json.dumps(json.loads(text), sort_keys=True, indent=1) + "\n"
    assert P.read_prompt_file(path) == {side: data[side]["prompts"] for side in P.SIDES}
    assert [p.name for p in path.parent.iterdir()] == ["g.json"]  # atomic write leaves no temporary file
    with pytest.raises(ValueError, match="exists"):
        G.write_prompt_file(path, data, overwrite=False)
    with pytest.raises(ValueError, match="read_prompt_file"):
        P.read_class_prompts(path, "bottle")


def test_class_file_round_trip(fake_llm, tmp_path):
    data = G.generate_ensemble("llm_class", 0, dataset="visa", classes=["pcb1", "candle"],
                               budget={"target_items": 3, "max_completions": 1}, progress=False)
    assert list(data["classes"]) == ["candle", "pcb1"]  # dataset order
    # class-specific sets keep class names ("a broken screw", "a photo of a bottle top.")
    assert data["classes"]["pcb1"]["abnormal"]["prompts"] == ["a photo of a cracked part.", "a part with a dent.",
                                                              "a broken screw."]
    assert data["classes"]["pcb1"]["name"] == "circuit board"
    path = G.write_prompt_file(tmp_path / "c.json", data)
    got = P.read_class_prompts(path, "pcb1")
    assert got == {side: data["classes"]["pcb1"][side]["prompts"] for side in P.SIDES}
    with pytest.raises(ValueError, match=r"'pcb2'.*c\.json|c\.json.*'pcb2'"):
        P.read_class_prompts(path, "pcb2")
    with pytest.raises(ValueError, match="read_class_prompts"):
        P.read_prompt_file(path)


def test_generate_rejects_bad_requests(fake_llm):
    with pytest.raises(ValueError, match="llm_class"):
        G.generate_ensemble("llm_generic", 0, dataset="mvtec", progress=False)
    with pytest.raises(ValueError, match="--dataset"):
        G.generate_ensemble("llm_class", 0, progress=False)
    with pytest.raises(ValueError, match="winclip"):
        G.generate_ensemble("winclip", 0, progress=False)
    with pytest.raises(ValueError, match="unknown class"):
        G.generate_ensemble("llm_class", 0, dataset="mvtec", classes=["pcb1"], progress=False)


# ------------------------------------------------------------------------------------------------ model files
def test_missing_model_file_error_names_it(tmp_path):
    with pytest.raises(ValueError, match=r"not found: .*nope\.gguf"):
        llm.resolve_model(tmp_path / "nope.gguf")


def test_corrupt_model_file_errors_name_it(tmp_path):
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"this is not a model at all" * 10)
    with pytest.raises(ValueError, match=r"junk\.gguf is not a GGUF file"):
        llm.resolve_model(junk)
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF\x03\x00\x00\x00" + b"\x00junk" * 20)  # right magic, broken body: llama.cpp refuses it
    with pytest.raises(ValueError, match=r"could not load .*bad\.gguf"):
        llm.Generator(llm.resolve_model(bad))


def test_default_model_is_assembled_and_verified(tmp_path, monkeypatch):
    pkg = pytest.importorskip(llm.MODEL_PACKAGE)
    target = tmp_path / pkg.MODEL_NAME
    target.write_bytes(b"GGUF stale or corrupt cache")
    monkeypatch.setattr(pkg, "default_output_path", lambda base_dir=None: target)
    assert llm.default_model_path() == target
    assert llm.sha256_file(target) == pkg.EXPECTED_SHA256
    assert [p.name for p in tmp_path.iterdir()] == [target.name]


# ------------------------------------------------------------------------------------------------ real LLM
def test_seeded_generation_is_byte_identical_and_matches_fixture():
    assert FIXTURE.is_file(), f"missing fixture {FIXTURE}; generate it once with: {FIXTURE_HOWTO}"
    first = G.dumps_prompt_file(G.generate_ensemble("llm_generic", 0, progress=False, **FIXTURE_ARGS))
    same, second = G.regenerate_prompt_file(FIXTURE, progress=False)
    assert first == second, "two generations with the same seed differ"
    assert same and first.encode() == FIXTURE.read_bytes(), (
        "generation differs from the committed fixture (different model file or llama.cpp build?)")
    data = json.loads(first)
    assert data["model"]["file"] == "gemma-3-270m-q4_k_m.gguf" and data["counts"]["normal"]["kept"] >= 1
    assert sum(r["n_tokens"] for r in data["raw_output"]) <= 80


# ------------------------------------------------------------------------------------------------ committed files
def _committed():
    return G.committed_prompt_files()


def test_committed_files_exist():
    names = {p.name for p in _committed()}
    want = {f"llm_generic_seed{s}.json" for s in G.GENERIC_SEEDS} | {
        f"llm_class_{d}.json" for d in G.DATASET_CLASSES}
    assert want <= names, f"missing under prompts/: {sorted(want - names)} (see prompts/README.md)"


@pytest.mark.parametrize("path", _committed(), ids=lambda p: p.name)
def test_committed_file_is_the_cleaned_raw_output(path):
    """Re-parse the raw model output and re-apply the clean-up rules: the committed lists must come out (no LLM)."""
    data = json.loads(path.read_text())
    assert path.read_text() == G.dumps_prompt_file(data)
    raw = {}
    for r in data["raw_output"]:
        first = int(r["prompt"].rsplit("\n", 1)[1].rstrip("."))
        raw.setdefault((r["key"], r["side"]), []).extend(
            (f"{r['key']}/{r['side']}/{r['completion']}", t) for t in G.parse_list_completion(first, r["text"],
                                                                                                r["finish"]))
    if data["ensemble"] == "llm_generic":
        assert data["recipes"] == list(G.GENERIC_RECIPES)
        blocks = {side: (data[side], [raw.get((r, side), []) for r in data["recipes"]],
                         [e for r in data["recipes"] for e in G.GENERIC_RECIPES[r][side][1]]) for side in P.SIDES}
        sides = [(side, True, *blocks[side]) for side in P.SIDES]
        assert P.read_prompt_file(path) == {side: data[side]["prompts"] for side in P.SIDES}
    else:
        assert list(data["classes"]) == list(G.DATASET_CLASSES[data["dataset"]])
        sides = [(side, False, data["classes"][c][side], [raw.get((c, side), [])],
                  G._class_recipe_texts(c)[side][1]) for c in data["classes"] for side in P.SIDES]
        for c in data["classes"]:
            assert P.read_class_prompts(path, c)["normal"]
    for side, generic, block, items, examples in sides:
        kept, dropped = G.clean_prompts([i for part in items for i in part], side, generic=generic, examples=examples)
        assert kept == block["prompts"] and dropped == block["dropped"]
        assert block["counts"]["kept"] == len(kept) and block["counts"]["raw"] == len(kept) + len(dropped)
        assert kept, f"{path.name}: empty {side} side"
        if generic:
            assert not any(G.mentions_class_name(p) for p in kept)


# ------------------------------------------------------------------------------------------------ command line
def _cli(argv):
    """Run ``zsad prompts ...`` through the sub-command tree as zsad.cli wires it (errors -> exit code 2)."""
    from zsad.prompt_cli import register

    parser = argparse.ArgumentParser(prog="zsad")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except ValueError as exc:  # what zsad.cli.main does with our errors
        print(f"zsad: error: {exc}")
        return 2


def test_cli_show_and_errors(capsys, tmp_path):
    assert _cli(["prompts", "show", str(FIXTURE), "-n", "2"]) == 0
    out = capsys.readouterr().out
    assert "llm_generic, seed 0" in out and "normal: 2 prompts kept of 4" in out and "r2_synonyms" in out
    assert _cli(["prompts", "generate", "--recipe", "llm_generic", "--seed", "0", "--model",
                 str(tmp_path / "none.gguf"), "--out", str(tmp_path / "o.json")]) == 2
    assert "none.gguf" in capsys.readouterr().out
    assert _cli(["prompts", "generate", "--recipe", "llm_generic", "--seed", "0", "--dataset", "mvtec",
                 "--out", str(tmp_path / "o.json")]) == 2
    assert not (tmp_path / "o.json").exists()


# ------------------------------------------------------------------------------------------------ user classes
def _refuse_llm(monkeypatch):
    def refuse(*a, **k):
        raise AssertionError("the LLM was loaded although the class prompts were cached")

    monkeypatch.setattr(llm, "Generator", refuse)


def test_user_class_prompts_are_generated_once_and_cached(fake_llm, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    path = G.class_prompt_file("bottle cap", 0, cache_dir=cache)
    assert path.parent == cache and path.name.startswith("bottle_cap-s0-")
    # the cached file is exactly what generate_ensemble writes for that one class: its own provenance
    want = G.dumps_prompt_file(G.generate_ensemble("llm_class", 0, classes=["bottle cap"], progress=False))
    assert path.read_text() == want
    data = json.loads(want)
    entry = data["classes"]["bottle cap"]
    assert data["dataset"] is None and data["model"]["sha256"] == "0" * 64 and data["seed"] == 0
    assert (entry["name"], entry["hint"]) == ("bottle cap", "a bottle cap photographed for visual inspection")
    assert "Product: bottle cap (a bottle cap photographed for visual inspection)." in data["raw_output"][0]["prompt"]
    assert P.read_class_prompts(path, "bottle cap") == {"normal": ["a clean photo of an intact part.",
                                                                   "a part in perfect shape.",
                                                                   "a photo of a bottle top."],
                                                        "abnormal": ["a photo of a cracked part.",
                                                                     "a part with a dent.", "a broken screw."]}
    before = path.stat().st_mtime_ns
    _refuse_llm(monkeypatch)
    assert G.class_prompt_file("bottle cap", 0, cache_dir=cache) == path  # served from the cache, no LLM
    assert path.stat().st_mtime_ns == before
    with pytest.raises(AssertionError, match="LLM was loaded"):  # another seed is another file: generated
        G.class_prompt_file("bottle cap", 1, cache_dir=cache)
    # a dataset class keeps its own product line; another model file is another key
    monkeypatch.setattr(llm, "Generator", FakeGenerator)
    nut = json.loads(G.class_prompt_file("metal_nut", 0, cache_dir=cache).read_text())
    assert nut["classes"]["metal_nut"]["hint"] == G.CLASS_INFO["metal_nut"][1]
    monkeypatch.setattr(llm, "resolve_model", lambda m=None: llm.ModelInfo(fake_llm, "1" * 64))
    other = G.class_prompt_file("bottle cap", 0, cache_dir=cache)
    assert other != path and json.loads(other.read_text())["model"]["sha256"] == "1" * 64


def test_user_class_cache_key_and_bad_entries(fake_llm, tmp_path):
    key = G.class_cache_key("pcb", 0, "0" * 64)
    assert key == G.class_cache_key("pcb", 0, "0" * 64) and len(key) == 64
    assert len({key, G.class_cache_key("PCB", 0, "0" * 64), G.class_cache_key("pcb", 1, "0" * 64),
                G.class_cache_key("pcb", 0, "1" * 64),
                G.class_cache_key("pcb", 0, "0" * 64, budget={"target_items": 3})}) == 5
    path = G.class_prompt_file("pcb", 0, cache_dir=tmp_path)
    good = path.read_bytes()
    path.write_text("{truncated")  # an unreadable entry is a miss: regenerated, same bytes
    assert G.class_prompt_file("pcb", 0, cache_dir=tmp_path).read_bytes() == good


@pytest.mark.parametrize("name", ["Ø-ring / 3½\" (grade A)", "../../etc/passwd", "a{name}b", "bottle_cap", "pcb"])
def test_odd_class_names_stay_in_the_cache_and_keep_their_key(fake_llm, tmp_path, name):
    path = G.class_prompt_file(name, 0, cache_dir=tmp_path / "c")
    assert path.parent == tmp_path / "c" and [p.name for p in path.parent.iterdir()] == [path.name]
    assert path.name.isascii() and "/" not in path.name
    data = json.loads(path.read_text())
    assert list(data["classes"]) == [name]  # exactly the name Cheung's runner looks up
    assert P.read_class_prompts(path, name)["abnormal"]
    spoken = " ".join(name.replace("_", " ").split())
    assert data["classes"][name]["name"] == spoken and f"Product: {spoken} (" in data["raw_output"][0]["prompt"]


@pytest.mark.parametrize("name, match", [("", "non-empty"), ("   ", "non-empty"), ("cap\nlid", "line breaks"),
                                         ("tab\there", "control"), ("x" * 81, "longer than 80"),
                                         ("!!!", "no letter or digit"), (3, "non-empty string")])
def test_bad_class_names_are_refused_before_the_llm(tmp_path, monkeypatch, name, match):
    _refuse_llm(monkeypatch)
    monkeypatch.setattr(llm, "resolve_model", lambda m=None: pytest.fail("model resolved before the name check"))
    with pytest.raises(ValueError, match=match):
        G.class_prompt_file(name, 0, cache_dir=tmp_path)
    assert not any(tmp_path.iterdir())


def test_a_class_whose_side_the_rules_empty_is_a_named_error(fake_llm, tmp_path, monkeypatch):
    class AllDefects(FakeGenerator):
        def complete_list(self, prompt, seed, max_tokens):
            return {"text": " a photo of a cracked part.\n5. a part with a dent.\n", "finish": "end_of_list",
                    "n_tokens": 12}

    monkeypatch.setattr(llm, "Generator", AllDefects)
    with pytest.raises(ValueError, match=r"no usable normal prompt for class 'gasket' with seed 0 .*"
                                         r"contradicts_side \d+.*another prompt seed"):
        G.class_prompt_file("gasket", 0, cache_dir=tmp_path)


def test_real_user_class_generation_is_deterministic(tmp_path, monkeypatch):
    """The local Gemma 3 270M with a tiny budget: two fresh caches get the same bytes; the second call of each is
    served from the cache."""
    pytest.importorskip("llama_cpp")
    # One completion of 30 tokens per side (~2 s with the model load). Seed 2: with so small a budget seeds 0 and 1
    # leave the normal side empty (the 270M model describes defects; contradicts_side drops them), seed 2 does not.
    budget = {"target_items": 1, "max_completions": 1, "max_tokens": 30}
    first = G.class_prompt_file("bottle cap", 2, cache_dir=tmp_path / "a", budget=budget)
    second = G.class_prompt_file("bottle cap", 2, cache_dir=tmp_path / "b", budget=budget)
    assert first.name == second.name and first.read_bytes() == second.read_bytes()
    data = json.loads(first.read_text())
    assert data["model"]["file"] == "gemma-3-270m-q4_k_m.gguf" and len(data["raw_output"]) == 2
    _refuse_llm(monkeypatch)
    assert G.class_prompt_file("bottle cap", 2, cache_dir=tmp_path / "a", budget=budget) == first


def test_cli_generates_user_classes_into_the_cache(fake_llm, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("ZSAD_CACHE", str(tmp_path / "cache"))
    assert _cli(["prompts", "generate", "--recipe", "llm_class", "--classes", "bottle cap, pcb"]) == 0
    out = capsys.readouterr().out
    files = sorted((tmp_path / "cache" / "prompts" / "llm_class").iterdir())
    assert [f.name.split("-")[0] for f in files] == ["bottle_cap", "pcb"]
    assert f"bottle cap: {files[0]}" in out and f"pcb: {files[1]}" in out
    # the same classes into one file: each class's entry and raw output equal its own cached file's
    assert _cli(["prompts", "generate", "--recipe", "llm_class", "--classes", "bottle cap,pcb", "--out",
                 str(tmp_path / "both.json")]) == 0
    both = json.loads((tmp_path / "both.json").read_text())
    assert list(both["classes"]) == ["bottle cap", "pcb"]
    for f in files:
        one = json.loads(f.read_text())
        (cls,) = one["classes"]
        assert both["classes"][cls] == one["classes"][cls]
        assert [r for r in both["raw_output"] if r["key"] == cls] == one["raw_output"]
    for argv, match in [(["--recipe", "llm_generic", "--classes", "pcb"], "llm_class only"),
                        (["--recipe", "llm_class", "--classes", "a,,b"], "empty class name"),
                        (["--recipe", "llm_class", "--dataset", "visa"], "--out is required"),
                        (["--recipe", "llm_class", "--classes", "pcb,pcb", "--out", str(tmp_path / "x.json")],
                         "given twice")]:
        assert _cli(["prompts", "generate", *argv]) == 2
        assert match in capsys.readouterr().out

