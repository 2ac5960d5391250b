"""Write the notebooks' cells (without outputs) from one place: `python tools/notebooks.py [name ...]`.

The committed notebooks are these cells executed by papermill (`make notebooks`), outputs included, so that nbval
can check them. Edit a notebook here (or in JupyterLab, then port the change here) and re-run `make notebooks`.
"""
from __future__ import annotations

import ast
import sys
from pathlib import Path

import nbformat as nbf

HERE = Path(__file__).resolve().parent.parent / "notebooks"
md, code = nbf.v4.new_markdown_cell, nbf.v4.new_code_cell


def params(text: str):
    """The ``parameters`` cell and, after papermill's injected cell, a hidden cell refusing unknown names."""
    names = [t.id for node in ast.parse(text).body if isinstance(node, ast.Assign) for t in node.targets]
    check = code(f"import zsad\n\nzsad.check_parameters(globals(), {tuple(names)!r})",
                 metadata={"tags": ["remove-cell"]})
    return [code(text.strip(), metadata={"tags": ["parameters"]}), check]


PROVENANCE = code(
    "from IPython.display import Markdown\n\n"
    "Markdown(zsad.provenance_markdown(next(iter(res[\"provenance\"].values()))))")
WEIGHTS = code("Markdown(zsad.weights_note(res[\"provenance\"]))")
RUN_PARAMS = '''
datasets = "synthetic,magnetic_tile"  # comma-separated: synthetic, magnetic_tile, mvtec, visa, folder
roots = ""  # comma-separated roots in the same order; empty: embedded data or $ZSAD_MVTEC_ROOT / $ZSAD_VISA_ROOT
seeds = "0,1"  # few-shot reference draws; tables show mean ± std over them
model = "zsad-tiny-vit"  # open_clip architecture; the papers use ViT-B-16-plus-240
checkpoint = ""  # local open_clip checkpoint; empty: $ZSAD_CHECKPOINT, or seeded RANDOM WEIGHTS
max_images = 12  # test images per class (evenly spaced subset); 0: all
n_boot = 100  # bootstrap resamples for the confidence intervals
results_dir = ""  # where run folders go; empty: results/
progress = False  # tqdm bars per feature pass (off keeps the stored outputs free of timings)
executor = "local"  # "ray": run the settings as Ray tasks ($RAY_ADDRESS or a local Ray); same results
autocast = ""  # "bf16" (CPU/GPU) or "fp16" (GPU): image towers under torch.autocast; empty: float32
'''
RUN_KW = ("datasets=datasets, roots=roots, seeds=seeds, model=model, checkpoint=checkpoint or None, "
          "max_images=max_images or None, n_boot=n_boot, results_dir=results_dir or None, progress=progress, "
          "executor=executor, autocast=autocast or None")

NOTEBOOKS = {}

NOTEBOOKS["t01_data"] = [
    md("# The data\n\nWhat each dataset holds, and what the defects look like. Every other chapter runs by default "
       "on the two datasets embedded in the repository: a seeded **synthetic** set with planted scratches, blobs and "
       "missing parts (exact masks), and a small subset of the real **Magnetic-tile** defect dataset (Huang et al. "
       "2020). MVTec AD and VisA load from their published layouts when you point at them (see {doc}`../book/rerun`)."),
    params('''
datasets = "synthetic,magnetic_tile"  # comma-separated: synthetic, magnetic_tile, mvtec, visa, folder
roots = ""  # comma-separated roots in the same order; empty: the embedded or configured default
examples_per_defect = 1  # test images shown per class and defect type
image_size = 160  # display size in pixels (images are squashed to squares, as the methods see them)
'''),
    code("import matplotlib.pyplot as plt\n\nimport zsad\n\n"
         "overview = zsad.dataset_overview(datasets, roots)\n"
         "overview.pivot_table(index=[\"dataset\", \"class\", \"split\"], columns=\"defect\", values=\"images\", "
         "aggfunc=\"sum\", fill_value=0)"),
    md("Counts per dataset, class and split; columns are defect types (`good` = defect-free). Every defect image has "
       "a pixel mask; in the magnetic-tile data a few `uneven` masks are empty (the original dataset has four such "
       "files)."),
    code('overview.groupby(["dataset", "split"])[["images", "masks"]].sum()'),
    md("Examples: one test image per class and defect type, the ground-truth mask outlined in red."),
    code("for name, records in zsad.load_many(datasets, roots).items():\n"
         "    zsad.example_grid(records, per_group=examples_per_defect, size=image_size, title=name)\n"
         "    plt.show()"),
    md("The magnetic-tile images are from Y. Huang, C. Qiu and K. Yuan, *Surface defect saliency of magnetic tile*, "
       "The Visual Computer 36 (2020); see `data/magnetic_tile_subset/README.md` for how the subset was chosen."),
    code("from IPython.display import Markdown\n\n"
         "Markdown(zsad.provenance_markdown(zsad.provenance({\"datasets\": datasets, \"roots\": roots})))"),
]

NOTEBOOKS["t02_main_results"] = [
    md("# Main results: FADE, WinCLIP and PatchCore at 0, 1, 2 and 4 shots\n\n"
       "FADE's Tables 1 (anomaly classification, AC) and 4 (anomaly segmentation, AS): FADE in its official fusion "
       "of language and vision guidance, WinCLIP (0-shot) and WinCLIP+ (k-shot), and PatchCore (k-shot) on the same "
       "images, evaluated at 448 x 448 with one metrics module. Few-shot rows are the mean ± standard deviation over "
       "reference draws (`seeds`); a single run shows its 95 % bootstrap interval over test images in brackets "
       "(class-mean pixel metrics carry none: a full pixel evaluation per resample costs minutes at MVTec scale)."),
    params(RUN_PARAMS + '''methods = "fade,winclip,patchcore"  # any of zsad.study.METHODS
shots = "0,1,2,4"  # PatchCore has no 0-shot row
sizes = "240,448,896"  # FADE's segmentation scales (empty when methods has no fade)
'''),
    code("import matplotlib.pyplot as plt\nfrom IPython.display import Markdown\n\nimport zsad\n\n"
         f"res = zsad.run_grid(\"t02_main\", methods=methods, shots=shots, sizes=sizes or None, {RUN_KW})\n"
         "summary = zsad.summarise(res[\"metrics\"])"),
    WEIGHTS,
    md("**Anomaly classification** (image level: AUROC, AUPR by the trapezoid rule, best F1) and **anomaly "
       "segmentation** (pixel level at 448 x 448: pAUROC, exact PRO up to FPR 0.3, best pixel F1); class means."),
    code('zsad.format_table(summary, metrics=("auroc", "aupr", "f1_max"))'),
    code('zsad.format_table(summary, metrics=("pauroc", "pro", "pf1_max"))'),
    code('zsad.shots_plot(summary, metrics=("auroc", "pauroc"))\nplt.show()'),
    md("**Reported in the paper.** FADE's own numbers (MVTec AD and VisA, real CLIP weights), next to ours where we ran "
       "the same dataset. With the default parameters we ran only the embedded data, so our column is empty here; "
       "run this notebook with `-p datasets mvtec,visa` and a checkpoint to fill it (see {doc}`../book/rerun`)."),
    code('zsad.paper_table(res["metrics"], "fade2024", methods=methods, metric_names=("auroc", "pauroc", "pro"))'),
    PROVENANCE,
]

IMPORTS = "import matplotlib.pyplot as plt\nfrom IPython.display import Markdown\n\nimport zsad\n\n"

NOTEBOOKS["t03_gem_vs_clip"] = [
    md("# GEM vs CLIP patch embeddings\n\n"
       "FADE's Tab. 3 compares the plain CLIP patch tokens with GEM's for language-guided zero-shot segmentation: with "
       "real CLIP weights the plain tokens give a pAUROC *below 50 %* (normal and anomalous regions swap), GEM's far "
       "above. The authors' conclusion asks for the same comparison everywhere; here it is for every component that "
       "uses patch or CLS tokens: language AC and AS, vision-guided zero-shot AS (query self-memory) and vision-guided "
       "k-shot AS (reference memory). Each row changes only the token stream, nothing else."),
    params(RUN_PARAMS + '''shots = 1  # reference images of the k-shot vision rows
sizes = "240,448,896"  # FADE's segmentation scales
'''),
    code(IMPORTS + f"res = zsad.run_settings(\"t03_gem_vs_clip\", zsad.gem_vs_clip_settings(shots), sizes=sizes, {RUN_KW})\n"
         "summary = zsad.summarise(res[\"metrics\"])"),
    WEIGHTS,
    md("Language rows: AC from the CLS token, AS from the patch tokens of the named stream. Vision rows: the anomaly "
       "map from nearest-neighbour distances between patch tokens of the named stream (AC is the map's maximum)."),
    code('zsad.format_table(summary, metrics=("auroc", "pauroc", "pro", "pf1_max"))'),
    md("**Reported in the paper** (FADE Tab. 3, language-guided zero-shot AS, real CLIP weights; pAUROC):"),
    code('zsad.paper_reported().query("paper == \'fade2024\' and table == \'Tab. 3\'")'
         '[["dataset", "variant", "metric", "value", "source"]]'),
    PROVENANCE,
]

NOTEBOOKS["t05_scales"] = [
    md("# Image scales\n\n"
       "FADE's Tab. 8 (AC) and 9 (AS): each input scale alone (240, 448 and 896 px: 15x15, 28x28 and 56x56 patch grids) "
       "and their combination (maps resized to the 56x56 grid and averaged), in the official fusion of language and "
       "vision guidance at 0, 1, 2 and 4 shots. Language AC always uses the 240 px CLS token, so AC changes with the "
       "scale only through the vision term of the few-shot rows."),
    params(RUN_PARAMS + '''shots = "0,1,2,4"
scales = "240;448;896;240,448,896"  # semicolon-separated scale sets
'''),
    code(IMPORTS + f"res = zsad.run_settings(\"t05_scales\", zsad.scale_settings(shots, scales), {RUN_KW})\n"
         "summary = zsad.summarise(res[\"metrics\"])"),
    WEIGHTS,
    code('zsad.format_table(summary, metrics=("auroc", "pauroc", "pro"))'),
    md("**Reported in the paper** (FADE Tab. 8: AUROC, Tab. 9: pAUROC; MVTec AD, real CLIP weights):"),
    code('zsad.paper_reported().query("paper == \'fade2024\' and table in [\'Tab. 8\', \'Tab. 9\']")'
         '.pivot_table(index=["dataset", "metric", "variant"], columns="setting", values="value")'),
    PROVENANCE,
]

NOTEBOOKS["t07_tamura"] = [
    md("# Tamura 2023: random words and a small network on CLIP text embeddings\n\n"
       "Tamura trains a feed-forward network on CLIP *text* embeddings of prompts into which random words are "
       "inserted, and applies it to image, window and patch embeddings, with no training image and no class name. The "
       "rows compare it with WinCLIP zero-shot on the same backbone and images: the category-agnostic word "
       "\"object\" against the class name, and 0 against several random words (the paper's central claim). The "
       "choices the paper's summary leaves open (word source, insertion, network, training) are parameters of "
       "`zsad.methods.tamura.TamuraConfig`, documented in its docstring."),
    params(RUN_PARAMS + '''random_words = "0,3"  # numbers of inserted random words to compare
'''),
    code(IMPORTS + f"res = zsad.run_settings(\"t07_tamura\", zsad.tamura_settings(random_words), {RUN_KW})\n"
         "summary = zsad.summarise(res[\"metrics\"])"),
    WEIGHTS,
    code('zsad.format_table(summary, metrics=("auroc", "aupr", "pauroc", "pro"))'),
    md("**Reported in the paper:** the material available to this study (the paper's abstract and a summary) states "
       "no numbers, so there is no paper column here; `results/paper_reported.csv` has no Tamura rows."),
    PROVENANCE,
]

NOTEBOOKS["t04_prompts"] = [
    md("# Prompt ensembles\n\n"
       "FADE's Tab. 7: the text prototypes of language-guided segmentation from WinCLIP's compositional prompts "
       "alone, or with an LLM-written ensemble of generic normal/abnormal object descriptions. FADE's ensemble came "
       "from ChatGPT and cannot be regenerated; ours come from a seeded local model (Gemma 3 270M through llama.cpp, "
       "`prompts/`, byte-reproducible with `zsad prompts check`), with five seeds so that the spread due to the LLM's "
       "sampling is visible, the question the FADE authors leave open. Zero-shot, language guidance only, so that "
       "nothing but the prompts changes between rows."),
    params(RUN_PARAMS + '''prompt_files = "llm_generic_seed0,llm_generic_seed1,llm_generic_seed2,llm_generic_seed3,llm_generic_seed4"  # names in prompts/ or paths
sizes = "240,448,896"
'''),
    code(IMPORTS + f"res = zsad.run_settings(\"t04_prompts\", zsad.prompt_settings(prompt_files), sizes=sizes, {RUN_KW})\n"
         "summary = zsad.summarise(res[\"metrics\"])"),
    WEIGHTS,
    code('zsad.format_table(summary, metrics=("auroc", "pauroc", "pro", "pf1_max"))'),
    md("The spread of pAUROC over the five LLM seeds, each alone and united with the WinCLIP prompts:"),
    code('zsad.variant_plot(summary, "pauroc")\nplt.show()'),
    md("**Reported in the paper** (FADE Tab. 7, language-guided zero-shot AS with GEM patches, ChatGPT ensemble, real "
       "CLIP weights; pAUROC):"),
    code('zsad.paper_reported().query("paper == \'fade2024\' and table == \'Tab. 7\'")[["dataset", "variant", "metric", "value"]]'),
    PROVENANCE,
]

NOTEBOOKS["t06_cheung"] = [
    md("# Cheung et al. 2024: LLM class prompts, Grounding DINO crops and CLIP\n\n"
       "Zero-shot image-level detection (AC) from three models: class-specific prompts describing normal and defective "
       "appearance (GPT-3 in the paper; here the seeded local LLM, `prompts/llm_class_*.json`), object boxes from "
       "Grounding DINO queried with the class name, and CLIP matching the fused whole-image and crop embeddings to "
       "the two prompt prototypes with the paper's ratio score (eq. 4). The ablation rows drop the generated prompts "
       "(WinCLIP's ensemble instead) or the detector (whole image only); all three come from one detector pass. "
       "Choices the paper leaves open are documented in `zsad.methods.cheung`."),
    params(RUN_PARAMS.replace('datasets = "synthetic,magnetic_tile"  # comma-separated: synthetic, magnetic_tile, mvtec, visa, folder',
                              'datasets = "magnetic_tile"  # the LLM class prompts cover magnetic_tile, mvtec and visa') + '''class_prompts = "llm_class_magnetic_tile"  # LLM class-prompt file (name in prompts/ or a path) for the dataset
detector = ""  # Grounding DINO folder in Hugging Face format; empty: a small seeded RANDOM detector
'''),
    code(IMPORTS + f"res = zsad.run_settings(\"t06_cheung\", zsad.cheung_settings(), class_prompts=class_prompts, "
         f"detector=detector or None, {RUN_KW})\n"
         "summary = zsad.summarise(res[\"metrics\"])"),
    WEIGHTS,
    code('zsad.format_table(summary, metrics=("auroc", "aupr", "f1_max"))'),
    md("**Reported in the paper** (Cheung et al. Tables II-V; MVTec AD and VisA; GPT-3 prompts, real weights):"),
    code('zsad.paper_table(res["metrics"], "cheung2024", metric_names=("auroc", "aupr"))'),
    PROVENANCE,
]

NOTEBOOKS["t08_gallery"] = [
    md("# Anomaly-map gallery\n\n"
       "What the maps look like: for each method and setting, the defective images it scores highest and lowest, and "
       "the defect-free images it scores highest (false alarms), with the anomaly map overlaid (blue low, red high, "
       "one colour scale per run) and the true defect outlined in white. Score above each image."),
    params(RUN_PARAMS.replace('seeds = "0,1"', 'seeds = "0"') + '''settings = "fade:0,fade:1,winclip:0,winclip:1,patchcore:1"  # method:shots pairs
per_group = 2  # images per group (top anomalous, lowest anomalous, top normal)
'''),
    code(IMPORTS + "chosen = [{\"method\": m, \"shots\": int(k)} for m, k in (s.split(\":\") for s in settings.split(\",\"))]\n"
         f"res = zsad.run_settings(\"t08_gallery\", chosen, {RUN_KW})"),
    WEIGHTS,
    code("for path in res[\"paths\"]:\n    zsad.gallery(path, n=per_group)\n    plt.show()"),
    PROVENANCE,
]


def write(name: str) -> Path:
    nb = nbf.v4.new_notebook()
    nb.cells = [c for cell in NOTEBOOKS[name] for c in (cell if isinstance(cell, list) else [cell])]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    path = HERE / f"{name}.ipynb"
    nbf.write(nb, path)
    return path


if __name__ == "__main__":
    for name in sys.argv[1:] or NOTEBOOKS:
        print(write(name))
