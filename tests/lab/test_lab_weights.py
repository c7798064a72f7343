"""Shipped weights: checksums, named error, tokenizer round trip + PSNR floor, target sanity."""
import os
import shutil

import pytest
import torch

from cascade_lab import WeightsError, data, load_target, load_vq
from cascade_lab.vq import psnr
from cascade_lab.weights import WEIGHTS_DIR, load_weights, sha256_file

torch.set_num_threads(2)

PSNR_FLOOR_DB = 23.5  # measured: 24.76 dB on all 500 held-out images (weights/training_log.json)


def test_checksums_match():
    import json

    sums = json.load(open(os.path.join(WEIGHTS_DIR, "checksums.json")))
    for name in ["vq.pt", "target.pt", "drafter_eagle.pt", "classifier.pt"]:
        assert name in sums, name
        assert sha256_file(os.path.join(WEIGHTS_DIR, name)) == sums[name], name
    total = sum(os.path.getsize(os.path.join(WEIGHTS_DIR, f)) for f in os.listdir(WEIGHTS_DIR))
    assert total < 50e6  # issue 16: shipped weights <= 50 MB


def test_corrupt_and_missing_give_named_error(tmp_path):
    for f in ["vq.pt", "checksums.json"]:
        shutil.copy(os.path.join(WEIGHTS_DIR, f), tmp_path / f)
    load_weights("vq.pt", str(tmp_path))  # intact copy loads
    with open(tmp_path / "vq.pt", "r+b") as fh:
        fh.seek(1000)
        b = fh.read(1)
        fh.seek(1000)
        fh.write(bytes([b[0] ^ 0xFF]))
    with pytest.raises(WeightsError, match="vq.pt"):
        load_vq(str(tmp_path))
    os.remove(tmp_path / "vq.pt")
    with pytest.raises(WeightsError, match="vq.pt"):
        load_vq(str(tmp_path))
    with pytest.raises(WeightsError, match="target.pt"):
        load_target(str(tmp_path))


def test_tokenizer_roundtrip_and_psnr():
    vq = load_vq()
    x, _ = data.heldout_crops()
    x = x[::3]
    ids = vq.encode(x)
    assert ids.shape == (len(x), 256) and ids.dtype == torch.int64
    assert int(ids.min()) >= 0 and int(ids.max()) < vq.num_codes
    rec = vq.decode(ids)
    assert rec.shape == x.shape
    assert vq.embedding.shape == (vq.num_codes, vq.code_dim)
    assert psnr(rec, x) > PSNR_FLOOR_DB


def _heldout_losses():
    vq, m = load_vq(), load_target()
    x, c = data.heldout_crops()
    ids = vq.encode(x[::4])
    c = c[::4]
    import torch.nn.functional as F

    lc, _ = m(c, ids[:, :-1])
    lu, _ = m(torch.full_like(c, m.null_class), ids[:, :-1])
    loss_c = F.cross_entropy(lc.reshape(-1, lc.shape[-1]), ids.reshape(-1))
    loss_u = F.cross_entropy(lu.reshape(-1, lu.shape[-1]), ids.reshape(-1))
    return loss_c, loss_u, m.cfg.vocab_size


def test_target_shipped_learned_the_tokens():
    loss_c, _, V = _heldout_losses()
    assert loss_c < 0.6 * torch.log(torch.tensor(float(V)))  # measured 2.63 nats against log(4096) = 8.32


def test_target_shipped_is_class_conditional():
    loss_c, loss_u, _ = _heldout_losses()
    assert loss_c < loss_u - 0.01  # the class helps (measured 2.626 vs 2.669 nats on all 500 held-out images)


def test_load_pretrained_drafter_shapes():
    from cascade_lab import load_pretrained
    from cascade_kernels import tree_buffers

    p = load_pretrained()
    cls = torch.tensor([0, 5])
    cache, logits, hidden = p.target.prefill(cls)
    assert logits.shape == (2, p.target.cfg.vocab_size) and hidden.shape == (2, p.target.cfg.dim)
    tok = logits.argmax(-1)
    dcache = p.drafter.new_cache(2)
    parents = torch.tensor([[-1, 0, 0], [-1, 0, 1]])
    bufs = tree_buffers(parents, dcache.lengths)
    dl, df = p.drafter.forward_tree(dcache, tok[:, None].expand(2, 3), hidden[:, None].expand(2, 3, -1),
                                    bufs.mask, bufs.position_ids)
    assert dl.shape == (2, 3, p.target.cfg.vocab_size) and df.shape == (2, 3, p.target.cfg.dim)
    torch.testing.assert_close(p.drafter.head.weight, p.target.head.weight)
    assert p.classifier(torch.zeros(1, 3, 64, 64)).shape == (1, data.NUM_CLASSES)
