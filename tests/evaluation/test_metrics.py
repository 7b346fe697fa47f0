import math
import random

import pytest
import torch

from conftest import leave_gloo_group, spawn_on_two_gloo_ranks
from ra3.evaluation.metrics import PassAtK, TokenPerplexity, pass_at_k


def test_pass_at_k_matches_the_closed_form_on_random_cases():
    rng = random.Random(0)
    for _ in range(500):
        n = rng.randint(1, 60)
        c = rng.randint(0, n)
        k = rng.randint(1, n)
        closed = 1.0 if n - c < k else 1 - math.comb(n - c, k) / math.comb(n, k)
        assert pass_at_k(n, c, k) == pytest.approx(closed, abs=1e-12)


def test_pass_at_k_edge_cases_and_large_n():
    assert pass_at_k(10, 0, 1) == 0.0
    assert pass_at_k(10, 10, 5) == 1.0
    assert pass_at_k(10, 8, 3) == 1.0  # n - c < k
    assert pass_at_k(5, 1, 1) == pytest.approx(0.2)
    assert 0.0 < pass_at_k(2000, 3, 100) < 1.0  # no overflow where comb() would be huge
    with pytest.raises(ValueError):
        pass_at_k(3, 4, 1)


def test_pass_at_k_metric_averages_problems_and_skips_too_few_samples():
    metric = PassAtK(k=[1, 2])
    metric.update([4, 4], [1, 4])
    metric.update(torch.tensor([1]), torch.tensor([1]))  # n=1 counts for pass@1 only
    out = metric.compute()
    assert out["pass@1"].item() == pytest.approx((0.25 + 1.0 + 1.0) / 3)
    assert out["pass@2"].item() == pytest.approx((pass_at_k(4, 1, 2) + 1.0) / 2)


def _ddp_worker(rank, port, out):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    metric = PassAtK(k=1)
    metric.update([5], [2]) if rank == 0 else metric.update([5, 5], [0, 5])
    out[rank] = metric.compute()["pass@1"].item()  # compute() syncs states across ranks
    leave_gloo_group()


def test_metric_syncs_across_ddp_processes():
    import torch.multiprocessing as mp

    out = mp.Manager().dict()
    spawn_on_two_gloo_ranks(_ddp_worker, out)
    expected = (pass_at_k(5, 2, 1) + 0.0 + 1.0) / 3
    assert out[0] == pytest.approx(expected) and out[1] == pytest.approx(expected)


def test_token_perplexity():
    m = TokenPerplexity()
    m.update(torch.tensor(2.0), torch.tensor(2))
    m.update(torch.tensor(4.0), torch.tensor(2))
    assert m.compute().item() == pytest.approx(math.exp(1.5))


def test_thought_accuracy_by_category_and_position():
    from ra3.evaluation.metrics import thought_accuracy

    row = {"prompt": "def solve(xs):\n    \"\"\"doc\"\"\"", "boundaries": [2, 4, 6], "macros": ["tidy", "", ""],
           "intents": ["tidy the list", "add 7 to each value", "reverse the list"]}
    exact = {**row, "thoughts": [{"line": 0, "text": "tidy the list"}, {"line": 2, "text": "add  7 to each value"},
                                 {"line": 4, "text": "Reverse the list"}]}
    wrong = {**row, "thoughts": [{"line": 0, "text": "sort the list"}, {"line": 2, "text": "add 9 to each value"},
                                 {"line": 3, "text": "reverse the list"}]}  # one misplaced: missing + spurious
    a = thought_accuracy([exact, wrong, {"text": "no ground truth"}])
    assert a["n"] == 6 and a["exact"] == pytest.approx(0.5)
    assert a["by_category"]["routine"] == {"n": 2, "exact": 0.5, "missing": 0.0, "wrong_number": 0.0}
    assert a["by_category"]["numbered_step"]["wrong_number"] == 0.5
    assert a["by_category"]["plain_step"]["missing"] == 0.5
    assert a["by_position"][2] == {"n": 2, "exact": 0.5} and a["spurious_per_row"] == 0.5
