"""The continuous-token stack (cvae.py, ctarget.py) and ck.generate_continuous on tiny random-init models."""
import math

import pytest
import torch

import cascade_kernels as ck
from cascade_lab.ctarget import (LOG_SCALE_MIN, ContinuousDrafter, ContinuousTargetConfig, ContinuousTransformer,
                                 drafter_loss)
from cascade_lab.cvae import ContinuousVAE
from cascade_lab.model import chain_mask

D = 3


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    t = ContinuousTransformer(ContinuousTargetConfig(num_classes=3, dim=32, n_layers=2, n_heads=4, mlp_hidden=64,
                                                     max_seq_len=17, latent_dim=D, mixture_components=4)).eval()
    with torch.no_grad():  # less tiny weights, so that positions and classes change the densities
        for n, p in t.named_parameters():
            if p.dim() > 1:
                p.mul_(4.0)
            elif n.startswith(("cls_bias", "pos_emb")):
                p.normal_()
    d = ContinuousDrafter.from_target(t).eval()
    return t, d


def test_vae_shapes_and_normalisation():
    torch.manual_seed(0)
    v = ContinuousVAE(latent_dim=4, ch=8).eval()
    x = torch.rand(5, 3, 64, 64) * 2 - 1
    rec, kl = v(x)
    assert rec.shape == x.shape and kl.dim() == 0 and float(kl.detach()) >= 0
    v.fit_normalisation(x)
    z = v.encode(x)
    assert z.shape == (5, 64, 4)
    torch.testing.assert_close(z.transpose(0, 2).reshape(4, -1).mean(1), torch.zeros(4), atol=1e-4, rtol=0)
    img = v.decode(z)
    assert img.shape == x.shape and img.abs().max() <= 1
    with pytest.raises(ValueError, match="square"):
        v.decode(z[:, :63])
    with pytest.raises(ValueError, match=r"\[B, N, 4\]"):
        v.decode(z[..., :3])


def test_mixture_head_valid(tiny):
    t, _ = tiny
    x = torch.randn(2, 10, D)
    dist, h = t(torch.tensor([0, 2]), x)
    assert isinstance(dist, ck.GaussianMixture) and dist.batch_shape == (2, 11) and dist.K == 4 and dist.D == D
    assert h.shape == (2, 11, 32)
    assert bool((dist.log_scales > LOG_SCALE_MIN).all()) and bool(torch.isfinite(dist.log_scales).all())
    w = dist.logits.softmax(-1)
    torch.testing.assert_close(w.sum(-1), torch.ones(2, 11))
    assert bool(torch.isfinite(dist.log_prob(torch.randn(2, 11, D))).all())


def test_kv_cache_chain_and_tree_equal_full_forward(tiny):
    t, _ = tiny
    torch.manual_seed(1)
    cls, x = torch.tensor([1, 2]), torch.randn(2, 9, D)
    full, hfull = t(cls, x)
    cache, d0, h0 = t.prefill(cls)
    torch.testing.assert_close(d0.means, full.means[:, 0], atol=1e-5, rtol=1e-5)
    dist, h = t.decode_step(cache, x[:, :4])  # chain forward + commit
    torch.testing.assert_close(dist.means, full.means[:, 1:5], atol=1e-5, rtol=1e-5)
    # a tree: two branches after the prefix; the branch x[4..6] must reproduce the full forward
    branch = torch.cat([x[:, 4:7], torch.randn(2, 2, D)], 1)
    parents = torch.tensor([-1, 0, 1, 0, 3])
    bufs = ck.tree_buffers(parents.expand(2, -1).to(torch.int32), prefix_len=cache.lengths)
    dt, ht = t.forward_tree(cache, branch, bufs.mask, bufs.position_ids)
    torch.testing.assert_close(dt.log_scales[:, :3], full.log_scales[:, 5:8], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ht[:, :3], hfull[:, 5:8], atol=1e-5, rtol=1e-5)
    cache.commit(torch.tensor([[0, 1], [0, -1]]))
    assert cache.lengths.tolist() == [7, 6]


def test_drafter_shapes_loss_and_frozen_copies(tiny):
    t, d = tiny
    assert not d.tok_emb.weight.requires_grad and not d.head.proj.weight.requires_grad
    torch.testing.assert_close(d.head.proj.weight, t.head.proj.weight)
    x = torch.randn(2, 6, D)
    _, h = t(torch.tensor([0, 1]), x[:, :-1])
    dist, f = d(x[:, :-1], h[:, :-1])
    assert dist.batch_shape == (2, 5) and f.shape == (2, 5, 32)
    q, _ = t(torch.tensor([0, 1]), x[:, :-1])
    loss, parts = drafter_loss(f, dist, h[:, 1:], q[:, 1:], torch.arange(20).view(2, 2, 5))
    assert math.isfinite(float(loss.detach())) and set(parts) == {"feat_smooth_l1", "ce"}
    cache = d.new_cache(2, 16)
    dt, ft = d.forward_tree(cache, x[:, :-1], h[:, :-1], chain_mask(2, 5), torch.arange(5).expand(2, 5))
    torch.testing.assert_close(dt.means, dist.means, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("mode", ["ar", "exact", "cspd"])
def test_generate_continuous_deterministic_and_finite(tiny, mode):
    t, d = tiny
    kw = dict(num_tokens=13, seed=[5, 9, 11])
    if mode != "ar":
        kw.update(drafter=d, draft_len=3, criterion=mode)
    cls = torch.tensor([0, 1, 2])
    a = ck.generate_continuous(t, cls, **kw)
    b = ck.generate_continuous(t, cls, **kw)
    assert a.latents.shape == (3, 13, D) and bool(torch.isfinite(a.latents).all())
    assert torch.equal(a.latents, b.latents)
    c = ck.generate_continuous(t, cls, **dict(kw, seed=[6, 9, 11]))
    assert not torch.equal(c.latents[0], a.latents[0]) and torch.equal(c.latents[1:], a.latents[1:])
    for s in a.stats:
        assert s.tokens == 13 and 1 <= s.target_forwards <= 13
        if mode == "ar":
            assert s.target_forwards == 13
    if mode == "cspd":  # the target alone draws the first ceil(0.15 * 13) = 2 tokens
        assert all(s.accept_lengths[:1] == [0] for s in a.stats)


def test_generate_continuous_batch_rows_independent(tiny):
    """A sequence's tokens do not depend on the other rows of the batch (different accept lengths)."""
    t, d = tiny
    kw = dict(drafter=d, num_tokens=11, draft_len=3)
    both = ck.generate_continuous(t, torch.tensor([0, 2]), seed=[3, 4], **kw)
    one = ck.generate_continuous(t, torch.tensor([2]), seed=[4], **kw)
    torch.testing.assert_close(both.latents[1], one.latents[0], atol=1e-5, rtol=1e-5)


def test_generate_continuous_named_errors(tiny):
    t, d = tiny
    cls = torch.tensor([0])
    with pytest.raises(ValueError, match="criterion"):
        ck.generate_continuous(t, cls, drafter=d, criterion="lossy")
    with pytest.raises(ValueError, match="needs a drafter"):
        ck.generate_continuous(t, cls, criterion="cspd")
    with pytest.raises(ValueError, match="num_classes"):
        ck.generate_continuous(t, torch.tensor([3]))
    with pytest.raises(ValueError, match="draft_len"):
        ck.generate_continuous(t, cls, drafter=d, draft_len=0)
    with pytest.raises(ValueError, match="temperature"):
        ck.generate_continuous(t, cls, temperature=0.0)
    with pytest.raises(ValueError, match="class_ids"):
        ck.generate_continuous(t, torch.tensor([0.5]))


def test_mixture_sample_index_stack():
    g = ck.GaussianMixture(torch.randn(2, 3, 4), torch.randn(2, 3, 4, 2), torch.randn(2, 3, 4, 2))
    s = g.sample(torch.arange(6).view(2, 3))
    assert s.shape == (2, 3, 2) and torch.equal(s[1, 2], g[1, 2].sample(5))
    from cascade_kernels.ops.verify_continuous.mixture import sample_uniforms

    assert torch.equal(g.sample(uniforms=sample_uniforms(torch.arange(6).view(2, 3), 2)), s)
    with pytest.raises(ValueError, match="exactly one"):
        g.sample()
    assert ck.GaussianMixture.stack([g[:, 0], g[:, 1]], 1).batch_shape == (2, 2)
    torch.testing.assert_close(g.with_temperature(3.0).log_scales, g.log_scales + math.log(3.0))
    with pytest.raises(IndexError):
        g[..., 0]
    with pytest.raises(ValueError, match="batch shape"):
        g.sample(torch.zeros(3, 2, dtype=torch.int64))


def test_exact_speculative_decoding_matches_ar_statistically(tiny):
    """Exact chain SD emits the target's law: every token coordinate of 4000 SD sequences against 4000 AR
    sequences (independent seeds), two-sample Kolmogorov-Smirnov, Bonferroni over the 9 coordinates."""
    from scipy.stats import ks_2samp

    t, d = tiny
    n = 4000
    cls = torch.arange(n) % 3
    ar = ck.generate_continuous(t, cls, num_tokens=3, seed=0).latents
    sd = ck.generate_continuous(t, cls, drafter=d, num_tokens=3, draft_len=2, seed=10**6)
    accepted = sum(sum(s.accept_lengths) for s in sd.stats) / n
    assert accepted > 0.2  # the drafts are used, so the test checks the verification
    for i in range(3):
        for j in range(D):
            assert ks_2samp(ar[:, i, j].numpy(), sd.latents[:, i, j].numpy()).pvalue > 0.01 / 9, (i, j)


# ------------------------------------------------------------------ shipped weights
def test_shipped_continuous_weights_verify_and_load(tmp_path):
    import os
    import shutil

    from cascade_lab import WeightsError
    from cascade_lab.loaders import load_continuous, load_ctarget
    from cascade_lab.weights import WEIGHTS_DIR

    m = load_continuous()  # verifies every sha256
    assert m.target.cfg.latent_dim == m.cvae.latent_dim == m.drafter.cfg.latent_dim
    assert m.target.cfg.num_classes == 10 and m.target.cfg.max_seq_len == 65
    torch.testing.assert_close(m.drafter.head.proj.weight, m.target.head.proj.weight)
    for f in ["ctarget.pt", "checksums.json"]:
        shutil.copy(os.path.join(WEIGHTS_DIR, f), tmp_path / f)
    with open(tmp_path / "ctarget.pt", "r+b") as fh:
        fh.seek(500)
        b = fh.read(1)
        fh.seek(500)
        fh.write(bytes([b[0] ^ 0xFF]))
    with pytest.raises(WeightsError, match="ctarget.pt"):
        load_ctarget(str(tmp_path))


def test_shipped_vae_roundtrip_psnr():
    from cascade_lab import data
    from cascade_lab.cvae import SCENE_STYLE
    from cascade_lab.loaders import load_cvae
    from cascade_lab.vq import psnr

    v = load_cvae()
    x, _ = data.heldout_crops(SCENE_STYLE)
    x = x[::5]
    z = v.encode(x)
    assert z.shape == (len(x), 64, v.latent_dim)
    assert abs(float(z.std()) - 1.0) < 0.3  # normalised latents
    assert psnr(v.decode(z), x) > 24.0  # measured 25.05 dB on all 500 (weights/training_log.json)


def test_shipped_stack_decodes_finite_images():
    from cascade_lab.loaders import load_cdrafter, load_ctarget, load_cvae

    v, t, d = load_cvae(), load_ctarget(), load_cdrafter()
    out = ck.generate_continuous(t, torch.tensor([0, 6]), drafter=d, seed=3)
    assert out.latents.shape == (2, 64, t.cfg.latent_dim) and bool(torch.isfinite(out.latents).all())
    assert all(s.alpha > 1.0 for s in out.stats)
    img = v.decode(out.latents)
    assert img.shape == (2, 3, 64, 64) and bool(torch.isfinite(img).all())


@pytest.mark.slow
def test_shipped_exact_sd_matches_ar_statistically():
    """On the shipped models: 600 exact-SD images against 600 AR images, token-mean of every latent channel at
    4 grid positions (two-sample KS, Bonferroni over 32 comparisons)."""
    from scipy.stats import ks_2samp

    from cascade_lab.loaders import load_cdrafter, load_ctarget

    t, d = load_ctarget(), load_cdrafter()
    cls = torch.arange(600) % 10
    ar = ck.generate_continuous(t, cls, num_tokens=40, seed=0).latents
    sd = ck.generate_continuous(t, cls, drafter=d, num_tokens=40, seed=10**6).latents
    for pos in (0, 9, 20, 39):
        for j in range(t.cfg.latent_dim):
            assert ks_2samp(ar[:, pos, j].numpy(), sd[:, pos, j].numpy()).pvalue > 0.01 / 32, (pos, j)


def test_training_scripts_run_and_retrain_lists_them(tmp_path, monkeypatch, capsys):
    """train_cvae / train_ctarget / train_cdrafter run 2 steps each on 64 images (shipped VAE and target
    where a script loads them; nothing exported), and ``retrain`` lists the three steps."""
    from cascade_lab import retrain, train_cdrafter, train_ctarget, train_cvae

    for mod in (train_cvae, train_ctarget, train_cdrafter):
        monkeypatch.setattr(mod, "DEFAULT_RUN_DIR", str(tmp_path))
    common = ["--n-train", "64", "--steps", "2", "--batch", "4", "--no-export"]
    train_cvae.main(common + ["--run-dir", str(tmp_path / "cvae")])
    train_ctarget.main(common + ["--run-dir", str(tmp_path / "ctarget"), "--dim", "32", "--layers", "1"])
    train_cdrafter.main(common + ["--run-dir", str(tmp_path / "cdrafter")])
    out = capsys.readouterr().out
    assert "held-out PSNR" in out and "held-out NLL" in out and "expected acceptance" in out
    retrain.main(["--only", "cvae", "ctarget", "cdrafter", "--dry-run"])
    out = capsys.readouterr().out
    assert all(f"python -m cascade_lab.train_{c}" in out for c in ("cvae", "ctarget", "cdrafter"))
