"""The drafter trainer's Eq. 4 option is CASCADE's loss; with c = 1 it is EAGLE's loss exactly."""
import torch

from cascade_lab.drafter import eagle_loss, eq4_loss


def test_eq4_with_c1_is_eagle_loss_and_c2_weights_convergent_positions():
    g = torch.Generator().manual_seed(0)
    B, T, D, V = 2, 7, 8, 11
    pf, pl = torch.randn(B, T, D, generator=g), torch.randn(B, T, V, generator=g)
    tf, tl = torch.randn(B, T, D, generator=g), torch.randn(B, T, V, generator=g)
    eagle, _ = eagle_loss(pf, pl, tf, tl)
    same, _ = eq4_loss(pf, pl, tf, tl, c=1.0)
    assert torch.allclose(eagle, same, rtol=1e-5)
    tf_conv = tf[:, :1].expand(B, T, D).contiguous()  # every consecutive pair converges: all weights c
    weighted, _ = eq4_loss(pf, pl, tf_conv, tl, c=2.0)
    ce = -(tl.softmax(-1) * pl.log_softmax(-1)).sum(-1)  # [B, T]
    w = torch.full((B, T), 2.0)
    w[:, -1] = 1.0  # the last position of each sequence has no successor
    expected = torch.nn.functional.smooth_l1_loss(pf, tf_conv) + 0.1 * (w * ce).sum() / (B * T)
    assert torch.allclose(weighted, expected, rtol=1e-5)
