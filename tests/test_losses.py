import torch

from met_core.nn.losses import GRAPH_REGULARIZERS, knn_graph, label_graph, met_loss, relational_graph, self_distillation


def test_label_graph_is_mean_same_class_distance():
    z = torch.tensor([[1.0, 0.0], [0.0, 2.0], [3.0, 0.0], [0.0, 1.0]])
    y = torch.tensor([0, 1, 0, 1])
    assert label_graph(z, y, z, 0).item() == 0.0  # same-class pairs point the same way
    y2 = torch.tensor([0, 0, 1, 1])  # pairs (0,1) and (2,3) are orthogonal: 2 - 2cos = 2
    assert torch.isclose(label_graph(z, y2, z, 0), torch.tensor(2.0))
    assert label_graph(z, torch.arange(4), z, 0).item() == 0.0  # no pairs: term skipped


def test_relational_and_knn_vanish_when_early_equals_last():
    z = torch.randn(16, 8)
    assert relational_graph(z, None, z, 0).item() < 1e-10
    z2 = torch.randn(16, 8, requires_grad=True)
    loss = knn_graph(z2, None, z, 3)
    loss.backward()
    assert loss.item() > 0 and z2.grad.abs().sum() > 0


def test_met_loss_sums_exits_and_regularises_only_early_ones():
    torch.manual_seed(0)
    feats = [torch.randn(8, 4, requires_grad=True) for _ in range(3)]
    logits = [f @ torch.randn(4, 3) for f in feats]
    y = torch.tensor([0, 0, 1, 1, 2, 2, 0, 1])
    for kind in GRAPH_REGULARIZERS:
        loss, parts = met_loss(logits, feats, y, graph_reg=0.5, kind=kind)
        assert parts.gr is not None and parts.kd is None and torch.isfinite(loss)
    loss0, parts0 = met_loss(logits, feats, y, graph_reg=0.0)
    assert parts0.gr is None
    for f in feats:
        f.grad = None
    met_loss(logits, feats, y, graph_reg=0.0)[0].backward()
    loss, _ = met_loss([lg.detach() for lg in logits], feats, y, graph_reg=1.0)
    loss.backward()
    assert feats[-1].grad is None or feats[-1].grad.abs().sum() > 0


def test_self_distillation_pulls_early_exits_to_the_last_and_never_moves_the_last():
    torch.manual_seed(0)
    last = torch.randn(8, 5, requires_grad=True)
    assert self_distillation([last.detach().clone(), last], 3.0).item() < 1e-6  # agreeing exits: no loss
    early = torch.randn(8, 5, requires_grad=True)
    kd = self_distillation([early, last], 3.0)
    kd.backward()
    assert kd.item() > 0 and early.grad.abs().sum() > 0
    assert last.grad is None  # the teacher is detached
    y = torch.zeros(8, dtype=torch.long)
    loss, parts = met_loss([early, last], [early, last], y, graph_reg=0.0, distill=0.5, temperature=3.0)
    assert parts.gr is None and torch.isclose(torch.tensor(parts.kd), kd.detach())
    assert met_loss([early, last], [early, last], y, graph_reg=0.0)[1].kd is None
