"""Recipe fidelity to the DeepSeek reports, checked in-process on the recipes' own modules:
DeepSeekMoE's group-limited routing (V3's node-limited rule), the routed-gate scaling and
V3's sequence-wise balance loss next to the bias. No assertion is about speed."""

from __future__ import annotations

import torch

from recipes import deepseek_moe as moe


def _moe(groups: int, topk_groups: int, scale: float = 1.0) -> moe.MoE:
    torch.manual_seed(0)
    lay = moe.Layout(n_routed=31, k_routed=7, n_shared=1, d_hidden=8)  # 31: uneven groups
    return moe.MoE(16, lay, "sigmoid", groups, topk_groups, scale)


def _groups_per_token(m: moe.MoE, idx: torch.Tensor) -> torch.Tensor:
    return torch.stack([m.group_of[row].unique().numel() * torch.ones(()) for row in idx])


def test_group_limited_routing_keeps_each_token_within_m_groups() -> None:
    x = torch.randn(256, 16)
    limited, free = _moe(4, 2), _moe(4, 0)
    with torch.no_grad():
        assert _groups_per_token(limited, limited.route(x).idx).max() <= 2
        assert _groups_per_token(free, free.route(x).idx).max() > 2  # the limit is what binds


def test_groups_are_chosen_by_the_sum_of_their_best_k_over_m_affinities() -> None:
    m = _moe(4, 2)
    x = torch.randn(32, 16)
    with torch.no_grad():
        r = m.route(x)
        scores = r.scores + m.bias
        per = m.k // m.topk_groups
        for t in range(x.shape[0]):
            sums = [
                scores[t, m.group_of == g].topk(min(per, int((m.group_of == g).sum()))).values.sum()
                for g in range(m.groups)
            ]
            best = set(torch.stack(sums).topk(2).indices.tolist())
            assert set(m.group_of[r.idx[t]].tolist()) <= best
            allowed = scores[t].masked_fill(
                ~torch.isin(m.group_of, torch.tensor(sorted(best))), float("-inf")
            )
            assert set(r.idx[t].tolist()) == set(allowed.topk(m.k).indices.tolist())


def test_routed_gates_are_scaled_after_normalisation() -> None:
    with torch.no_grad():
        gates = _moe(1, 0, scale=2.5).route(torch.randn(8, 16)).gates
    assert torch.allclose(gates.sum(dim=-1), torch.full((8,), 2.5))


def test_the_sequence_wise_loss_next_to_the_bias_changes_the_router() -> None:
    cfg = moe.Config(
        arch=("fine_grained_shared",),
        balance=("bias",),
        steps=5,
        batch=4,
        seq_len=8,
        val_seqs=8,
        log_every=5,
    )
    g = torch.Generator().manual_seed(0)
    chains = moe.make_chains(cfg, g)
    data, val = moe.sample(cfg, chains, 5 * 4, g), moe.sample(cfg, chains, 8, g)
    runs = []
    for alpha in (0.0, 0.5):
        cfg_a = moe.Config(**{**cfg.__dict__, "seq_alpha": alpha})
        runs.append(moe.train(cfg_a, "fine_grained_shared", "bias", 0.001, data, val)["val_loss"])
    assert runs[0] != runs[1]
    assert moe.config_error(moe.Config(groups=4, topk_groups=5)) is not None
    assert moe.config_error(moe.Config(groups=4, topk_groups=2, seq_alpha=0.0001)) is None
