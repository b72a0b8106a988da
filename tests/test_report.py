"""Report pieces on small hand-made results: tables vs hand-computed mean/std, the Pareto front,
the generated claims, the figures, and report.html rendered in headless Chromium."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from fairtune.catalogue import CATALOGUE
from fairtune.report import (
    figures,
    html,
    method_label,
    paper,
    pareto_front,
    pareto_table,
    summarize_by,
    table2_display,
    table2_frame,
    table3_display,
    table3_frame,
)

#: Three seeds of three methods, numbers chosen so that mean and std are easy by hand.
RESULTS = pd.DataFrame({
    "method": ["pretrained"] * 3 + ["tl"] * 3 + ["win"] * 3 + ["retrain-eo:0.1"] * 3 + ["retrain-eo:0.9"] * 3,
    "seed": [0, 1, 2] * 5,
    "err": [16.0, 16.0, 16.0, 10.0, 12.0, 14.0, 9.0, 10.0, 11.0, 20.0, 21.0, 22.0, 25.0, 25.0, 25.0],
    "delta_dp": [0.2, 0.2, 0.2, 0.1, 0.2, 0.3, 0.3, 0.3, 0.3, 0.1, 0.1, 0.1, 0.05, 0.05, 0.05],
    "delta_eo": [0.2, 0.2, 0.2, 0.2, 0.2, 0.2, 0.1, 0.1, 0.1, 0.3, 0.3, 0.3, 0.2, 0.2, 0.2],
    "trainable_params": [66, 66, 66, 66, 66, 66, 40, 40, 40, 2000, 2000, 2000, 2000, 2000, 2000],
})


@pytest.fixture(scope="module")
def summary() -> pd.DataFrame:
    return summarize_by(RESULTS, ["method"])


def test_summary_is_mean_and_sample_std_over_seeds(summary):
    tl = summary.set_index("method").loc["tl"]
    assert tl["seeds"] == 3
    assert tl["err_mean"] == pytest.approx(12.0)
    assert tl["err_std"] == pytest.approx(2.0)  # sqrt(((10-12)^2 + 0 + (14-12)^2) / (3 - 1))
    assert tl["delta_dp_mean"] == pytest.approx(0.2)
    assert tl["delta_dp_std"] == pytest.approx(0.1)
    assert list(summary["method"]) == ["pretrained", "tl", "win", "retrain-eo:0.1", "retrain-eo:0.9"]


def test_table3_puts_the_papers_figures_beside_the_pretrained_row_only(summary):
    frame = table3_frame(summary, {"pretrained": paper.PRETRAINED})
    pretrained = frame.set_index("method").loc["pretrained"]
    assert (pretrained["paper_err"], pretrained["paper_delta_eo"], pretrained["paper_delta_dp"]) == (16.165, 0.223, 0.192)
    assert frame.set_index("method").loc[["tl", "win"], "paper_err"].isna().all()
    shown = table3_display(frame).set_index("method")
    assert shown.loc["TL", "Err (%)"] == "12.000 ± 2.000"
    assert shown.loc["TL", "paper Err (%)"] == "—"
    assert shown.loc["pre-trained", "paper ΔEO"] == "0.223"
    assert shown.loc["Retrain+EO λ=0.1", "trainable params"] == "2000"


def test_method_labels_name_lambda_variants_and_pass_unknown_names_through():
    assert method_label("retrain-eo:0.1") == "Retrain+EO λ=0.1"
    assert method_label("retrain-dp:0.9") == "Retrain+DP λ=0.9"
    assert method_label("win") == CATALOGUE["win"].label == "WIN"
    assert method_label("win-all") == CATALOGUE["win-all"].label == "WIN (all layers)"
    assert method_label("win-hidden@0.25") == "WIN (hidden) f=0.25"
    assert method_label("my-method") == "my-method"


def test_table2_takes_the_targeted_gap_and_the_change_per_seed():
    study = pd.DataFrame({
        "constraint": ["eo", "eo", "dp", "dp"], "lambda": [0.1, 0.1, 0.7, 0.7], "seed": [0, 1, 0, 1],
        "pretrain_err": [17.0, 19.0, 18.0, 18.0], "pretrain_delta_eo": [0.1, 0.3, 0.9, 0.9], "pretrain_delta_dp": [0.9, 0.9, 0.05, 0.15],
        "finetune_err": [16.0, 16.0, 17.0, 19.0], "finetune_delta_eo": [0.2, 0.2, 0.9, 0.9], "finetune_delta_dp": [0.9, 0.9, 0.2, 0.2],
    })
    frame = table2_frame(study).set_index("constraint")
    eo, dp = frame.loc["eo"], frame.loc["dp"]
    assert eo["pretrain_err_mean"] == pytest.approx(18.0) and eo["pretrain_err_std"] == pytest.approx(np.sqrt(2))
    assert eo["pretrain_bias_mean"] == pytest.approx(0.2)  # ΔEO for the EO row
    assert eo["bias_change_mean"] == pytest.approx(0.0)  # +0.1 and -0.1
    assert dp["pretrain_bias_mean"] == pytest.approx(0.1)  # ΔDP for the DP row
    assert dp["bias_change_mean"] == pytest.approx(0.1)  # +0.15 and +0.05
    assert eo["paper_pretrain_err"] == 16.835 and eo["paper_finetune_bias"] == 0.206
    assert np.isnan(dp["paper_pretrain_err"])  # the paper has no λ = 0.7 row
    shown = table2_display(table2_frame(study))
    assert shown.loc[0, "Err (%) paper"] == "16.835 → 16.676 ± 0.313"
    assert shown.loc[1, "bias paper"] == "—"


def test_pareto_front_on_hand_made_points():
    err = np.array([1.0, 2.0, 3.0, 4.0, 2.0, 5.0])
    gap = np.array([5.0, 3.0, 4.0, 1.0, 3.0, 1.0])
    # (3, 4) is dominated by (2, 3); (5, 1) by (4, 1); the duplicate (2, 3) stays with its twin.
    assert pareto_front(err, gap).tolist() == [True, True, False, True, True, False]
    assert pareto_front(np.array([1.0]), np.array([1.0])).tolist() == [True]


def test_pareto_table_names_the_lowest_err_method_per_bias_level(summary):
    by_eo = pareto_table(summary, "delta_eo")
    # ΔEO: win (10, 0.1) dominates everything else.
    assert list(by_eo["method"]) == ["WIN"]
    by_dp = pareto_table(summary, "delta_dp")
    # ΔDP: retrain-eo:0.9 (25, 0.05), retrain-eo:0.1 (21, 0.1), tl (12, 0.2), win (10, 0.3); pre-trained (16, 0.2) is dominated by tl.
    assert list(by_dp["method"]) == ["Retrain+EO λ=0.9", "Retrain+EO λ=0.1", "TL", "WIN"]
    assert by_dp["bias level"].iloc[0] == "ΔDP ≤ 0.050"


def test_claims_are_computed_from_the_numbers(summary):
    assert html.lower_than(summary, "win", "tl", "err") == (
        "WIN has lower Err than TL: **yes** (WIN 10.000 ± 1.000 vs TL 12.000 ± 2.000)")
    close = summarize_by(pd.DataFrame({"method": ["win", "win", "tl", "tl"], "err": [10.0, 14.0, 11.0, 13.0]}), ["method"])
    assert html.lower_than(close, "win", "tl", "err") == (
        "WIN has lower Err than TL: **no** (within 1 std) (WIN 12.000 ± 2.828 vs TL 12.000 ± 1.414)")
    assert html.lower_than(summary, "win", "tl", "delta_dp").startswith("WIN has lower ΔDP than TL: **no**")
    assert html.lower_than(summary, "win", "svd", "err") is None  # no f+SVD in these results
    headline, lines = html.figure4_claims(summary)
    assert headline.endswith("On our Adult runs: **no**.") and len(lines) == 3
    assert html.lowest_err_claim(summary).startswith("WIN has the lowest Err of all methods: **yes**")
    assert html.lambda_trend_claim(summary, "retrain-eo", "delta_dp").startswith("Raising λ of Retrain+EO lowers ΔDP: **yes**")
    assert html.lambda_trend_claim(summary, "retrain-eo", "delta_eo").startswith("Raising λ of Retrain+EO lowers ΔEO: **yes**")
    assert html.lambda_trend_claim(summary, "retrain-dp", "delta_dp") is None


def _png_is_drawn(path: Path) -> bool:
    with Image.open(path) as image:
        pixels = np.asarray(image.convert("L"), dtype=float)
    return image.format == "PNG" and min(pixels.shape) > 100 and pixels.std() > 1.0


@pytest.fixture(scope="module")
def figure_files(summary, tmp_path_factory) -> dict[str, Path]:
    directory = tmp_path_factory.mktemp("report")
    rng = np.random.default_rng(0)
    drawn = {
        "figures/fisher.png": figures.fisher_heatmaps(rng.random((2, 2, 12)), ("Female", "Male")),
        "figures/fisher3.png": figures.fisher_heatmaps(rng.random((3, 2, 12)), ("a", "b", "c")),
        "figures/bars.png": figures.metric_bars(summary),
        "figures/tradeoff.png": figures.accuracy_fairness(summary),
    }
    for name, figure in drawn.items():
        figures.save_png(figure, directory / name)
    return {name: directory / name for name in drawn}


def test_figures_are_written_as_non_blank_pngs(figure_files):
    for path in figure_files.values():
        assert path.stat().st_size > 5000
        assert _png_is_drawn(path), path


def test_every_method_has_one_colour_everywhere():
    methods = ["win", "tl", "brand-new", "other-new"]
    colors = figures.method_colors(methods)
    assert colors["win"] == CATALOGUE["win"].colour and colors["tl"] == CATALOGUE["tl"].colour
    assert colors["brand-new"] != colors["other-new"]
    assert figures.method_colors(["tl"])["tl"] == colors["tl"]
    assert len({info.colour for info in CATALOGUE.values()}) == len(CATALOGUE)
    shades = figures.method_colors(["retrain-eo:0.1", "retrain-eo:0.5", "retrain-eo:0.9", "retrain-eo"])
    assert len(set(shades.values())) == 3 and shades["retrain-eo"] == shades["retrain-eo:0.5"]


@pytest.fixture(scope="module")
def report_html(summary, figure_files) -> Path:
    """report.md and report.html written beside the figures; the path of report.html."""
    directory = next(iter(figure_files.values())).parent.parent
    captions = {f"caption {i}": name for i, name in enumerate(figure_files)}
    markdown = html.reproduction_markdown(
        title="t", summary=summary, table3=table3_display(table3_frame(summary, {})), table2=None, table2_numbers=None,
        ablation=pd.DataFrame({"operator": ["mean"]}), pareto={"delta_eo": pareto_table(summary, "delta_eo")},
        figures=captions, config={"seeds": [0, 1, 2]}, facts=["fact"],
    )
    html.write_report(markdown, "t <report>", directory)
    return directory / "report.html"


def test_markdown_and_html_reference_every_figure(report_html, figure_files):
    page = report_html.read_text()
    assert "<title>t &lt;report&gt;</title>" in page
    assert sorted(re.findall(r'<img src="([^"]+)"', page)) == sorted(figure_files)
    assert "<table>" in page and "WIN has lower Err than TL" in page
    markdown = report_html.with_name("report.md").read_text()
    assert sorted(re.findall(r"!\[[^]]*\]\(([^)]+)\)", markdown)) == sorted(figure_files)


# --- headless browser -------------------------------------------------------------------------

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
#: Written into the DOM after load: every <img>'s src and naturalWidth, as JSON.
IMAGE_CHECK = """<script>
window.addEventListener("load", () => {
  const images = Array.from(document.images).map(i => ({src: i.getAttribute("src"), width: i.naturalWidth}));
  const out = document.createElement("pre");
  out.id = "image-check";
  out.textContent = JSON.stringify(images);
  document.body.appendChild(out);
});
</script>"""


def images_as_rendered(report: Path) -> list[dict]:
    """Open a copy of ``report`` (with :data:`IMAGE_CHECK` and one deliberately broken image) in headless Chromium."""
    probe = report.with_name("report.probe.html")
    page = report.read_text().replace("</body>", '<img src="figures/missing.png" alt="control">\n' + IMAGE_CHECK + "\n</body>")
    probe.write_text(page)
    with tempfile.TemporaryDirectory() as profile:
        dom = subprocess.run(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={profile}", "--allow-file-access-from-files", "--virtual-time-budget=10000",
             "--dump-dom", probe.resolve().as_uri()],
            capture_output=True, text=True, timeout=120, check=True,
        ).stdout
    found = re.search(r'<pre id="image-check">(.*?)</pre>', dom, re.DOTALL)
    assert found, f"the image check did not run; DOM starts: {dom[:300]!r}"
    return json.loads(found.group(1).replace("&quot;", '"').replace("&amp;", "&"))


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install -y chromium)")
def test_report_html_shows_every_figure_in_a_headless_browser(report_html, figure_files):
    images = images_as_rendered(report_html)
    widths = {image["src"]: image["width"] for image in images}
    assert widths.pop("figures/missing.png") == 0  # the check can fail
    assert sorted(widths) == sorted(figure_files)
    assert all(width > 0 for width in widths.values()), widths
