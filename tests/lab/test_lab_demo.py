"""The demo runs end to end at a tiny size (random tiny weights) and writes a valid PNG and JSON."""
import json
import os

import pytest
import torch

from cascade_lab.ctarget import ContinuousDrafter, ContinuousTargetConfig, ContinuousTransformer
from cascade_lab.cvae import ContinuousVAE
from cascade_lab.drafter import Drafter
from cascade_lab.quality import Classifier
from cascade_lab.model import TargetConfig, Transformer
from cascade_lab.vq import VQVAE
from cascade_lab.weights import save_weights


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory):
    d = str(tmp_path_factory.mktemp("weights"))
    torch.manual_seed(0)
    vq_cfg = dict(num_codes=16, code_dim=4, ch=8)
    vq = VQVAE(**vq_cfg)
    save_weights("vq.pt", vq.state_dict(), vq_cfg, d)
    tcfg = TargetConfig(vocab_size=16, num_classes=3, dim=32, n_layers=2, n_heads=2, mlp_hidden=64)
    target = Transformer(tcfg)
    save_weights("target.pt", target.state_dict(), tcfg.to_dict(), d)
    drafter = Drafter.from_target(target)
    save_weights("drafter_eagle.pt", drafter.state_dict(), drafter.cfg.to_dict(), d)
    cvae_cfg = dict(latent_dim=3, ch=4)
    save_weights("cvae.pt", ContinuousVAE(**cvae_cfg).state_dict(), cvae_cfg, d)
    ccfg = ContinuousTargetConfig(num_classes=3, dim=32, n_layers=1, n_heads=2, mlp_hidden=64, max_seq_len=17,
                                  latent_dim=3, mixture_components=2)
    ctarget = ContinuousTransformer(ccfg)
    save_weights("ctarget.pt", ctarget.state_dict(), ccfg.to_dict(), d)
    cdrafter = ContinuousDrafter.from_target(ctarget)
    save_weights("cdrafter.pt", cdrafter.state_dict(), cdrafter.cfg.to_dict(), d)
    clf_cfg = dict(num_classes=3, ch=4, feat_dim=8)
    save_weights("classifier.pt", Classifier(**clf_cfg).state_dict(), clf_cfg, d)
    return d


def test_demo_writes_png_and_json(tiny_weights, tmp_path):
    from PIL import Image

    from cascade_lab import demo

    out = str(tmp_path / "out")
    result = demo.main(["--weights", tiny_weights, "--classes", "0", "2", "--methods", "ar", "exact", "cascade",
                        "--out", out, "--tree", "eagle"])
    with Image.open(os.path.join(out, "grid.png")) as im:
        im.verify()
    with open(os.path.join(out, "stats.json")) as f:
        stats = json.load(f)
    assert stats == json.loads(json.dumps(result))
    names = [m["method"] for m in stats["methods"]]
    assert names == ["ar", "exact", "cascade"]
    ar, exact = stats["methods"][0], stats["methods"][1]
    assert ar["alpha"] == pytest.approx(1.0) and ar["speedup"] == pytest.approx(1.0)
    assert exact["alpha"] >= 1.0 and exact["target_forwards"] <= 256
    assert all(t >= 0 for m in stats["methods"] for t in m["tvd_per_image"])
    cont = stats["continuous"]
    assert [m["method"] for m in cont["methods"]] == ["ar", "exact", "cspd"]
    assert cont["methods"][0]["alpha"] == pytest.approx(1.0) and all(m["alpha"] >= 1.0 for m in cont["methods"])
    assert all(len(m["batch1_wall_s"]) == 4 for m in cont["methods"])
    with Image.open(cont["grid"]) as im:
        im.verify()


def test_e2e_benchmark_writes_its_table(tiny_weights, tmp_path):
    """benchmarks/e2e.py in two parts, a speed-only part and --merge: one table with AR first, confidence
    intervals, acceptance by depth, the goal verdict, and the speed part's speedups."""
    import importlib.util

    path = os.path.join(os.path.dirname(__file__), "..", "..", "benchmarks", "e2e.py")
    spec = importlib.util.spec_from_file_location("e2e_bench", path)
    e2e = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(e2e)
    common = ["--weights", tiny_weights, "--out", str(tmp_path), "--images-per-class", "2", "--speed-images", "1",
              "--num-tokens", "16", "--batch", "4", "--drafters", "drafter_eagle.pt", "--part", "methods"]
    e2e.main(common + ["--methods", "exact", "--part-name", "a"])
    e2e.main(common + ["--methods", "cascade", "--part-name", "b"])
    speed = e2e.main(common[:-1] + ["speed", "--methods", "exact", "cascade", "--part-name", "s", "--speed-images", "2"])
    assert [set(m) for m in speed["methods"]] == [{"method", "residual", "median_s_per_image_b1", "speedup_b1"}] * 3
    e2e.main(common[:-1] + ["extras", "--part-name", "x", "--sweep", "0.9:0.7:0.25"])
    result = e2e.main(["--out", str(tmp_path), "--merge", "a", "b", "s", "x"])
    assert [(m["tau_pos"], m["tau_seq"], m["eps"]) for m in result["cascade_sweep"]] == [(0.9, 0.7, 0.25)]
    assert [m["method"] for m in result["methods"]] == ["ar", "exact", "cascade"]
    assert [m["speedup_b1"] for m in result["methods"]] == [m["speedup_b1"] for m in speed["methods"]]
    assert "--part speed" in result["command"]
    assert result["settings"]["top_k"] == max(1, round(2000 * 16 / 16384))  # the papers' top-k, scaled
    for m in result["methods"]:
        assert m["images"] == 6 and m["alpha"] >= 1.0 and m["alpha_ci95"] >= 0.0
        assert m["fid_boot_lo"] <= m["fid_boot_hi"] and 0.0 <= m["class_fidelity"] <= 1.0
        assert all(0.0 <= p <= 1.0 for p in m["accept_by_depth"])
        assert list(m["accept_by_depth"]) == sorted(m["accept_by_depth"], reverse=True)
    assert [bool(m["sibling_sets"]) for m in result["methods"]] == [False, False, True]  # CASCADE's interchange only
    sets = result["methods"][2]["sibling_sets"]
    assert 1.0 <= sets["first_child_set_size"] <= sets["root_children"]
    assert sets["root_children_distinct_tokens"] <= sets["root_children"] and 0.0 <= sets["steps_root_rejected"] <= 1.0
    text = open(os.path.join(tmp_path, "e2e_cpu.md")).read()
    assert "CASCADE α / Exact α =" in text and "| cascade |" in text
    assert "| 0.9 | 0.7 | 0.25 |" in text


def test_e2e_continuous_benchmark_writes_its_table(tiny_weights, tmp_path):
    """benchmarks/e2e_continuous.py: AR, exact and CSpD rows with intervals, the reference rows and the machine."""
    import importlib.util

    path = os.path.join(os.path.dirname(__file__), "..", "..", "benchmarks", "e2e_continuous.py")
    spec = importlib.util.spec_from_file_location("e2e_continuous_bench", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    result = bench.main(["--weights", tiny_weights, "--out", str(tmp_path), "--images-per-class", "2",
                         "--speed-images", "2", "--batch", "4", "--draft-len", "3"])
    assert [m["method"] for m in result["methods"]] == ["ar", "exact", "cspd"]
    for m in result["methods"]:
        assert m["images"] == 6 and m["alpha"] >= 1.0 and m["alpha_ci95"] >= 0.0
        assert m["fid_boot_lo"] <= m["fid_boot_hi"] and 0.0 <= m["class_fidelity"] <= 1.0
        assert m["speedup_b1"] > 0
    assert result["methods"][0]["alpha"] == 1.0 and result["machine"]["threads"] == 1
    text = open(os.path.join(tmp_path, "e2e_continuous_cpu.md")).read()
    assert "| cspd |" in text and "Reference: VAE reconstructions" in text
    from PIL import Image

    with Image.open(os.path.join(tmp_path, "e2e_continuous_grid_cpu.png")) as im:
        im.verify()


def test_demo_quality_runs_in_worker_processes_equal_one_process(tiny_weights, tmp_path):
    """--jobs 2 (spawned workers, each loading the weights) gives the runs one process gives: same α, TVD and
    forwards per method, in the order asked for."""
    from cascade_lab import demo

    common = ["--weights", tiny_weights, "--classes", "1", "2", "--methods", "cascade", "ar", "lantern", "exact",
              "--timing-rounds", "0", "--continuous-methods"]
    one = demo.main(common + ["--jobs", "1", "--out", str(tmp_path / "one")])
    two = demo.main(common + ["--jobs", "2", "--out", str(tmp_path / "two")])
    assert [m["method"] for m in two["methods"]] == ["cascade", "ar", "lantern", "exact"]
    assert two["methods"] == one["methods"]
    assert any(m["alpha"] > 1.0 for m in one["methods"])  # some drafts accepted: the runs are not trivial
