"""AMS algorithms: masked Adam (Algorithm 2), coordinate strategies (Table 3),
ASR (eq. 1) and ATR (brief §10.10)."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from torch import nn

from cloudtutor.algorithms import coordinates as co
from cloudtutor.algorithms.asr import (
    AdaptiveSamplingRate,
    AdaptiveTrainingRate,
    ATRState,
    asr_update,
    atr_update,
    phi_score,
)
from cloudtutor.algorithms.masked_adam import (
    MaskedAdam,
    freeze_batchnorm,
    run_phase,
    state_from_bytes,
    state_to_bytes,
    trainable_parameters,
)

# ---------------------------------------------------------------------------
# A tiny model whose gradients we write down by hand:
#   loss = 0.5 * sum_j C_j (w_j - T_j)^2   =>   g_j = C_j (w_j - T_j)
# over the 7 coordinates a (2x2, row-major) then b (3,), state-dict order.

W0 = [0.5, -1.0, 2.0, 0.25, 1.5, -0.75, 0.0]
T = [0.0, 1.0, 1.0, -2.0, 1.5, 3.0, -1.0]  # coordinate 4 starts at its target: g = 0
C = [1.0, 2.0, 0.5, 3.0, 1.0, 0.1, 4.0]
LR, B1, B2, EPS = 1e-3, 0.9, 0.999, 1e-8


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Parameter(torch.tensor(W0[:4]).reshape(2, 2))
        self.b = nn.Parameter(torch.tensor(W0[4:]))
        self.register_buffer("not_a_coordinate", torch.tensor([3.0]))

    def flat(self) -> torch.Tensor:
        return torch.cat([self.a.reshape(-1), self.b])

    def quadratic_loss(self) -> torch.Tensor:
        c, t = torch.tensor(C), torch.tensor(T)
        return 0.5 * (c * (self.flat() - t) ** 2).sum()


def reference_phase(w, m, v, i, mask, iters, eps_mode="paper"):
    """Algorithm 2 lines 8-13 in plain Python floats, gradients by hand."""
    w, m, v = list(w), list(m), list(v)
    us = []
    for _ in range(iters):
        g = [C[j] * (w[j] - T[j]) for j in range(7)]  # line 8, by hand
        m = [B1 * m[j] + (1 - B1) * g[j] for j in range(7)]  # line 9
        v = [B2 * v[j] + (1 - B2) * g[j] ** 2 for j in range(7)]  # line 10
        i += 1  # line 11
        s = LR * math.sqrt(1 - B2**i) / (1 - B1**i)
        if eps_mode == "paper":
            u = [s * m[j] / math.sqrt(v[j] + EPS) for j in range(7)]  # line 12
        else:
            u = [s * m[j] / (math.sqrt(v[j]) + EPS) for j in range(7)]
        w = [w[j] - u[j] * mask[j] for j in range(7)]  # line 13
        us.append(u)
    return w, m, v, i, us


def top_k_by_hand(u, k):
    return sorted(sorted(range(len(u)), key=lambda j: (-abs(u[j]), j))[:k])


def quadratic_step(model: Tiny, opt: MaskedAdam) -> None:
    opt.zero_grad()
    model.quadratic_loss().backward()
    opt.step()


@pytest.mark.parametrize("eps_mode", ["paper", "tf"])
def test_masked_adam_matches_hand_computed_reference(eps_mode):
    model = Tiny()
    opt = MaskedAdam(model, gamma=0.3, strategy="gradient", seed=7, eps_mode=eps_mode)
    assert opt.n_coords == 7
    k = 3  # ceil(0.3 * 7) = ceil(2.1): not a multiple of anything neat
    masks = opt.begin_phase()
    mask = [bool(x) for x in co.flatten_masks(masks)]
    assert sum(mask) == k == opt.selected_count
    # First phase: uniformly random, seeded by (seed, phase).
    assert mask == list(co.select_random(7, k, seed=7, phase=1))
    assert [tuple(m.shape) for m in masks] == [(2, 2), (3,)]

    w, m, v, i = list(W0), [0.0] * 7, [0.0] * 7, 0
    for it in range(3):
        before = model.flat().detach().clone()
        quadratic_step(model, opt)
        w, m, v, i, us = reference_phase(w, m, v, i, mask, 1, eps_mode)
        st = opt.state_dict()
        after = model.flat().detach()
        # Moments and step count move for EVERY coordinate (lines 9-11) ...
        np.testing.assert_allclose(st["m"], m, rtol=1e-6, atol=1e-12)
        np.testing.assert_allclose(st["v"], v, rtol=1e-6, atol=1e-12)
        assert st["step"] == i == it + 1
        np.testing.assert_allclose(st["acc"], us[-1], rtol=1e-5, atol=1e-10)  # u_{n,k} (line 12)
        # ... weights only for the selected ones (line 13), exactly unchanged elsewhere.
        for j in range(7):
            if mask[j]:
                assert after[j].item() == pytest.approx(w[j], abs=1e-6)
            else:
                assert after[j].item() == before[j].item() == W0[j]
        if it == 0:
            # The first step written out: g = C (W0 - T); m = 0.1 g; v = 0.001 g^2.
            g1 = [0.5, -4.0, 0.5, 6.75, 0.0, -0.375, 4.0]
            np.testing.assert_allclose(st["m"], [0.1 * x for x in g1], rtol=1e-6)
            np.testing.assert_allclose(st["v"], [0.001 * x * x for x in g1], rtol=1e-6)
            # u = 1e-3 * sqrt(1-0.999)/(1-0.9) * m / sqrt(v + eps) = 1e-3 * g / sqrt(g^2 + 1e-5)
            if eps_mode == "paper":
                assert st["acc"][1] == pytest.approx(-1e-3 * 4 / math.sqrt(16 + 1e-5), rel=1e-6)
            assert st["acc"][4] == 0.0  # zero gradient, zero update
    assert opt.end_phase()[0].dtype == torch.bool
    assert model.not_a_coordinate.item() == 3.0


def test_second_phase_selects_largest_last_update_and_continues():
    """Algorithm 2 lines 1 and 15: phase n+1 trains the ceil(γN) coordinates
    with the largest |u_{n,K}|; lines 3-5: from the latest w, m, v, i."""
    model = Tiny()
    opt = MaskedAdam(model, gamma=0.3, seed=3)
    mask1 = [bool(x) for x in co.flatten_masks(opt.begin_phase())]
    for _ in range(3):
        quadratic_step(model, opt)
    opt.end_phase()
    w, m, v, i, us = reference_phase(W0, [0.0] * 7, [0.0] * 7, 0, mask1, 3)
    expected = top_k_by_hand(us[-1], 3)  # |u_{1,K}|, applied or not
    mask2 = co.flatten_masks(opt.begin_phase())
    assert list(np.flatnonzero(mask2)) == expected
    assert opt.phase_index == 2
    for _ in range(2):
        quadratic_step(model, opt)
    opt.end_phase()
    w, m, v, i, _ = reference_phase(w, m, v, i, [bool(x) for x in mask2], 2)
    st = opt.state_dict()
    assert st["step"] == i == 5
    np.testing.assert_allclose(model.flat().detach().numpy(), w, atol=1e-6)
    np.testing.assert_allclose(st["m"], m, rtol=1e-6, atol=1e-12)
    np.testing.assert_allclose(st["v"], v, rtol=1e-6, atol=1e-12)


class Linear7(nn.Module):
    """loss = sum_j C_j w_j: a constant gradient, so equal |C_j| give exactly
    equal |u_j| (ties) whatever the mask did."""

    def __init__(self, c):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(7))
        self.c = torch.tensor(c)

    def loss(self):
        return (self.c * self.w).sum()


def test_gradient_selection_breaks_ties_by_lower_index():
    model = Linear7([0.5, -2.0, 1.0, 2.0, 1.0, 2.0, 3.0])
    opt = MaskedAdam(model, gamma=0.3, seed=11)  # k = 3
    run_phase(opt, lambda _: model.loss(), range(4))
    # |u| ranks coordinate 6 first, then 1, 3, 5 tie (|C| = 2): lower index wins.
    assert list(np.flatnonzero(co.flatten_masks(opt.begin_phase()))) == [1, 3, 6]


class Scheduled(nn.Module):
    """loss_k = sum_j G[k]_j w_j, so the gradient of iteration k is G[k] by hand."""

    G = [[1.0, 0.0, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0], [-1.0, 1.0, 0.0, -1.0]]

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(4))

    def loss(self, k):
        return (torch.tensor(self.G[k]) * self.w).sum()


@pytest.mark.parametrize(
    ("signal", "gamma", "expected"),
    [
        # Line 15, u_n = u_{n,K}: |u_{1,3}| = [0.262, 0.639, 0, 0.639] e-3;
        # coordinates 1 and 3 tie, the lower index goes first.
        ("last", 0.25, [1]),
        ("last", 0.5, [1, 3]),
        # The "sum" option: |sum_k u_{1,k}| = [2.262, 0.639, 0, 0.639] e-3.
        ("sum", 0.25, [0]),
        ("sum", 0.5, [0, 1]),
    ],
)
def test_selection_signal_is_the_last_iteration_update(signal, gamma, expected):
    model = Scheduled()
    opt = MaskedAdam(model, gamma=gamma, seed=0, selection_signal=signal)
    run_phase(opt, model.loss, range(3))
    # Hand-computed Adam (line 12) at i = 3: m = 0.1 G[2] for coordinates 1, 3
    # and v = 0.001; u = 1e-3 sqrt(1 - 0.999^3)/(1 - 0.9^3) * 0.1/sqrt(0.001 + 1e-8).
    u13 = 1e-3 * math.sqrt(1 - B2**3) / (1 - B1**3) * 0.1 / math.sqrt(0.001 + EPS)
    sig = opt.state_dict()["signal"]
    assert sig[1] == pytest.approx(u13, rel=1e-5) and sig[3] == pytest.approx(-u13, rel=1e-5)
    assert u13 == pytest.approx(0.6388e-3, rel=1e-4)
    assert list(np.flatnonzero(co.flatten_masks(opt.begin_phase()))) == expected


def test_sum_signal_option_accumulates_every_iteration():
    model = Tiny()
    opt = MaskedAdam(model, gamma=0.3, seed=3, selection_signal="sum")
    mask1 = [bool(x) for x in co.flatten_masks(opt.begin_phase())]
    for _ in range(3):
        quadratic_step(model, opt)
    opt.end_phase()
    *_, us = reference_phase(W0, [0.0] * 7, [0.0] * 7, 0, mask1, 3)
    total = [sum(u[j] for u in us) for j in range(7)]
    np.testing.assert_allclose(opt.state_dict()["signal"], total, rtol=1e-5, atol=1e-10)
    assert list(np.flatnonzero(co.flatten_masks(opt.begin_phase()))) == top_k_by_hand(total, 3)


def test_full_strategy_is_plain_adam():
    torch.manual_seed(0)
    x, y = torch.randn(8, 3), torch.randn(8, 2)
    m1 = nn.Linear(3, 2)
    m2 = copy.deepcopy(m1)
    ours = MaskedAdam(m1, strategy="full", eps=0.0, eps_mode="tf")
    ref = torch.optim.Adam(m2.parameters(), lr=1e-3, eps=0.0)
    ours.begin_phase()
    for _ in range(5):
        ours.zero_grad()
        ref.zero_grad()
        nn.functional.mse_loss(m1(x), y).backward()
        nn.functional.mse_loss(m2(x), y).backward()
        ours.step()
        ref.step()
    assert ours.selected_count == ours.n_coords
    for p, q in zip(m1.parameters(), m2.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=1e-6)


def test_missing_gradient_counts_as_zero():
    model = Tiny()
    opt = MaskedAdam(model, gamma=1.0, seed=0)
    opt.begin_phase()
    quadratic_step(model, opt)
    m_before = opt.state_dict()["m"].copy()
    opt.zero_grad()
    (model.a.sum() * 0 + model.a[0, 0]).backward()  # b gets no .grad at all
    opt.step()
    m_after = opt.state_dict()["m"]
    np.testing.assert_allclose(m_after[4:], 0.9 * m_before[4:], rtol=1e-6)


# ---------------------------------------------------------------------------
# Resuming: state round trip


class SmallNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))
        self.frozen = nn.Parameter(torch.ones(2), requires_grad=False)

    def forward(self, x):
        return self.body(x)


def _batches(seed: int, n: int):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(6, 4, generator=g), torch.randint(0, 3, (6,), generator=g)) for _ in range(n)]


def _loss(model):
    return lambda b: nn.functional.cross_entropy(model(b[0]), b[1])


def test_trainable_parameters_follow_state_dict_order():
    net = SmallNet()
    names = [n for n, _ in trainable_parameters(net)]
    assert names == [k for k in net.state_dict() if k in dict(net.named_parameters()) and k != "frozen"]
    assert "body.1.running_mean" not in names and "frozen" not in names


@pytest.mark.parametrize("strategy", ["gradient", "random", "first_last"])
def test_state_round_trip_resumes_bit_for_bit(strategy):
    torch.manual_seed(1)
    net = freeze_batchnorm(SmallNet().train())
    bn_before = {k: v.clone() for k, v in net.state_dict().items() if "running" in k}
    opt = MaskedAdam(net, gamma=0.1, strategy=strategy, seed=5)
    for phase in range(2):
        res = run_phase(opt, _loss(net), _batches(phase, 3))
        assert len(res.losses) == 3
    k = co.selection_size(opt.n_coords, 0.1)
    assert sum(int(m.sum()) for m in res.masks) == k

    blob = state_to_bytes(opt.state_dict())
    net2 = copy.deepcopy(net)
    opt2 = MaskedAdam(net2, gamma=0.5, strategy=strategy, seed=999)  # restored below
    opt2.load_state_dict(state_from_bytes(blob))

    masks1 = run_phase(opt, _loss(net), _batches(2, 3)).masks
    masks2 = run_phase(opt2, _loss(net2), _batches(2, 3)).masks
    for a, b in zip(masks1, masks2):
        assert torch.equal(a, b)
    for (_, p), (_, q) in zip(trainable_parameters(net), trainable_parameters(net2)):
        assert torch.equal(p, q)
    s1, s2 = opt.state_dict(), opt2.state_dict()
    assert s1.keys() == s2.keys()
    for key in s1:
        assert np.array_equal(np.asarray(s1[key]), np.asarray(s2[key])), key
    # BatchNorm stayed in eval mode: its buffers never moved.
    for key, val in bn_before.items():
        assert torch.equal(net.state_dict()[key], val)


def test_state_round_trip_in_the_middle_of_a_phase():
    torch.manual_seed(2)
    net = freeze_batchnorm(SmallNet().train())
    opt = MaskedAdam(net, gamma=0.2, seed=1)
    run_phase(opt, _loss(net), _batches(0, 2))
    opt.begin_phase()
    batches = _batches(1, 3)
    for b in batches[:1]:
        opt.zero_grad()
        _loss(net)(b).backward()
        opt.step()
    net2 = copy.deepcopy(net)
    opt2 = MaskedAdam(net2)
    opt2.load_state_dict(state_from_bytes(state_to_bytes(opt.state_dict())))
    assert opt2.in_phase
    for model, o in ((net, opt), (net2, opt2)):
        for b in batches[1:]:
            o.zero_grad()
            _loss(model)(b).backward()
            o.step()
        o.end_phase()
        o.begin_phase()  # picks from the signal, which spans the restart
    assert torch.equal(opt.flat_mask(), opt2.flat_mask())
    for (_, p), (_, q) in zip(trainable_parameters(net), trainable_parameters(net2)):
        assert torch.equal(p, q)


def test_load_rejects_other_shapes_and_misuse_raises():
    opt = MaskedAdam(Tiny(), gamma=0.5)
    with pytest.raises(ValueError):
        MaskedAdam(SmallNet()).load_state_dict(opt.state_dict())
    with pytest.raises(RuntimeError):
        opt.step()
    with pytest.raises(RuntimeError):
        opt.end_phase()
    opt.begin_phase()
    with pytest.raises(RuntimeError):
        opt.begin_phase()
    with pytest.raises(ValueError):
        MaskedAdam(Tiny(), gamma=0.0)
    with pytest.raises(ValueError):
        MaskedAdam(Tiny(), strategy="middle")


# ---------------------------------------------------------------------------
# Strategies (Table 3)


def test_selection_size_is_exact_ceiling():
    assert co.selection_size(7, 0.3) == 3
    assert co.selection_size(10, 0.25) == 3
    assert co.selection_size(100, 0.07) == 7  # 0.07*100 == 7.000000000000001 in floats
    assert co.selection_size(2_000_000, 0.05) == 100_000
    assert co.selection_size(3, 1.0) == 3
    for bad in (0.0, -0.1, 1.5):
        with pytest.raises(ValueError):
            co.selection_size(10, bad)


def test_each_strategy_selects_exactly_k_at_documented_positions():
    n, gamma = 10, 0.25  # k = ceil(2.5) = 3
    on = lambda m: list(np.flatnonzero(m))  # noqa: E731
    assert on(co.select("first", n, gamma)) == [0, 1, 2]
    assert on(co.select("last", n, gamma)) == [7, 8, 9]
    assert on(co.select("first_last", n, gamma)) == [0, 1, 9]  # odd one to the front
    assert on(co.select("first_last", n, 0.4)) == [0, 1, 8, 9]
    assert on(co.select("full", n, gamma)) == list(range(10))
    u = np.array([0.0, -5.0, 1.0, 5.0, 2.0, 5.0, 0.5, -2.0, 0.0, 9.0])
    assert on(co.select("gradient", n, gamma, update=u)) == [1, 3, 9]
    r1 = co.select("random", n, gamma, seed=4, phase=2)
    assert r1.sum() == 3 and r1.dtype == bool
    assert np.array_equal(r1, co.select("random", n, gamma, seed=4, phase=2))
    # No signal yet: gradient-guided starts random (Algorithm 2 prose).
    assert np.array_equal(co.select("gradient", n, gamma, seed=4, phase=2), r1)
    draws = {tuple(on(co.select_random(1000, 50, seed=4, phase=p))) for p in range(5)}
    assert len(draws) == 5 and all(len(d) == 50 for d in draws)
    for strategy in ("gradient", "random", "first", "last", "first_last"):
        for g in (0.01, 0.05, 0.1, 0.2, 0.33):
            m = co.select(strategy, 1001, g, update=np.arange(1001.0), seed=1, phase=1)
            assert m.shape == (1001,) and m.sum() == co.selection_size(1001, g)


def test_flatten_and_split_masks_round_trip():
    shapes = [(2, 3), (4,), (1, 1, 2)]
    flat = np.zeros(12, dtype=bool)
    flat[[0, 5, 6, 11]] = True
    parts = co.split_mask(flat, shapes)
    assert [p.shape for p in parts] == shapes
    assert parts[0][1, 2] and parts[1][0] and parts[2][0, 0, 1]
    assert np.array_equal(co.flatten_masks(parts), flat)
    tparts = co.split_mask(torch.from_numpy(flat), shapes)
    assert all(isinstance(p, torch.Tensor) for p in tparts)
    assert np.array_equal(co.flatten_masks(tparts), flat)
    with pytest.raises(ValueError):
        co.split_mask(flat[:11], shapes)


# ---------------------------------------------------------------------------
# ASR (eq. 1) and ATR


def test_asr_equation_one_and_clipping():
    assert asr_update(0.5, 0.5, eta=0.5, phi_target=0.2) == pytest.approx(0.65)
    assert asr_update(0.5, 0.0, eta=0.5, phi_target=0.2) == pytest.approx(0.4)
    assert asr_update(0.9, 0.9, eta=1.0, phi_target=0.2) == 1.0  # r_max
    assert asr_update(0.2, 0.0, eta=1.0, phi_target=0.2) == 0.1  # r_min


def test_asr_updates_once_per_delta_t_of_video_time():
    asr = AdaptiveSamplingRate(eta=0.5, phi_target=0.2, initial_rate=0.5, delta_t_s=10.0)
    assert asr.observe(100.0, 0.4) is None  # window [100, 110)
    assert asr.observe(105.0, 0.6) is None
    assert asr.observe(109.999, 0.5) is None  # not yet δt
    assert asr.rate == 0.5
    # t=110 closes the window: φ̄ = 0.5, r = 0.5 + 0.5 (0.5 - 0.2) = 0.65.
    assert asr.observe(110.0, 0.0) == pytest.approx(0.65)
    assert asr.last_phi_mean == pytest.approx(0.5)
    # [110, 120) holds φ = 0.0 only: r = 0.65 + 0.5 (0 - 0.2) = 0.55.
    # [120, 130) is empty: unchanged. Both close at t = 131.
    assert asr.advance(131.0) == pytest.approx(0.55)
    asr.observe(131.0, 1.0)
    asr.observe(139.0, 1.0)
    assert asr.advance(140.0) == pytest.approx(0.95)  # 0.55 + 0.5 (1.0 - 0.2)
    asr.observe(141.0, 1.0)
    assert asr.advance(150.0) == 1.0  # 0.95 + 0.4, clipped at r_max
    rates = [asr.observe(float(t), 0.0) for t in range(150, 270, 10)]
    assert rates[1:4] == pytest.approx([0.9, 0.8, 0.7])  # -0.1 per window
    assert asr.rate == 0.1  # clipped at r_min
    with pytest.raises(ValueError):
        asr.observe(200.0, 0.1)  # time went backwards


def test_asr_from_teacher_labels():
    a = np.zeros((4, 4), dtype=np.uint8)
    b = a.copy()
    b[:, 2:] = 1  # class 0: inter 8, union 16; class 1: inter 0, union 8
    assert phi_score(a, a) == 0.0
    assert phi_score(b, a) == pytest.approx(1 - (0.5 + 0.0) / 2)
    c = b.copy()
    c[0, :] = 255  # void in the reference (previous) map: unscored
    assert phi_score(b, c) == 0.0
    asr = AdaptiveSamplingRate(eta=1.0, phi_target=0.25, initial_rate=0.5, delta_t_s=10.0)
    assert asr.observe_labels(0.0, a) is None  # first frame: no predecessor, no φ
    asr.observe_labels(5.0, b)  # φ = 0.75
    assert asr.observe_labels(10.0, b) == pytest.approx(1.0)  # 0.5 + (0.75 - 0.25)


def test_atr_hysteresis_and_period_growth_capped_at_six_times():
    atr = AdaptiveTrainingRate(t_update_s=10.0)
    assert atr.update(0.25) == 10.0 and not atr.hibernating  # not < 0.25
    assert atr.update(0.2) == 12.0 and atr.hibernating
    assert atr.update(0.3) == 14.0  # between the thresholds: still hibernating
    assert atr.update(0.35) == 16.0  # not > 0.35
    periods = [atr.update(0.1) for _ in range(30)]
    assert periods[:3] == [18.0, 20.0, 22.0]
    assert max(periods) == periods[-1] == 60.0  # 6 x T_update
    assert atr.update(0.36) == 10.0 and not atr.hibernating
    assert atr.update(0.3) == 10.0  # awake between thresholds: stays awake
    s = atr_update(ATRState(True, 58.0), 0.0, t_update_s=10.0)
    assert s == ATRState(True, 60.0)
