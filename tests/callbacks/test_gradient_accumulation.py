"""persona.callbacks.gradient_accumulation: K accumulated steps == one Adam step on the mean."""

from __future__ import annotations

import pytest
import torch

from persona.callbacks.gradient_accumulation import GroupGradientAccumulation, accumulate_gradients_


def _grads(steps: int, seed: int = 0) -> list[list[torch.Tensor]]:
    generator = torch.Generator().manual_seed(seed)
    return [[torch.randn(4, 3, generator=generator), torch.randn(5, generator=generator)]
            for _ in range(steps)]


def test_accumulated_adam_equals_adam_on_the_mean_gradient():
    """Six steps accumulated three at a time move the parameters exactly as two Adam steps on
    the mean of each three gradients, and only on the third and sixth step."""
    every, grads = 3, _grads(6)
    params = [torch.zeros(4, 3, requires_grad=True), torch.zeros(5, requires_grad=True)]
    reference = [torch.zeros(4, 3, requires_grad=True), torch.zeros(5, requires_grad=True)]
    adam = torch.optim.Adam(params, lr=0.1)
    adam_reference = torch.optim.Adam(reference, lr=0.1)
    sums: list[torch.Tensor] = []
    count = 0
    for step, grad in enumerate(grads, start=1):
        before = [p.detach().clone() for p in params]
        for p, g in zip(params, grad, strict=True):
            p.grad = g.clone()
        count = accumulate_gradients_(params, sums, count, every)
        adam.step()
        moved = any(not torch.equal(b, p) for b, p in zip(before, params, strict=True))
        assert moved == (step % every == 0), step
        assert count == step % every
    for window in (grads[:3], grads[3:]):
        for i, p in enumerate(reference):
            p.grad = sum(g[i] for g in window) / every
        adam_reference.step()
    for p, r in zip(params, reference, strict=True):
        torch.testing.assert_close(p, r, rtol=0, atol=1e-7)


def test_every_one_is_plain_adam_and_a_step_without_gradients_is_not_counted():
    params = [torch.zeros(3, requires_grad=True)]
    sums: list[torch.Tensor] = []
    assert accumulate_gradients_(params, sums, 0, 1) == 0 and sums == []  # no grad: nothing
    params[0].grad = torch.ones(3)
    assert accumulate_gradients_(params, sums, 0, 1) == 0
    torch.testing.assert_close(params[0].grad, torch.ones(3))  # handed back unchanged
    params[0].grad = None
    assert accumulate_gradients_(params, sums, 1, 2) == 1
    with pytest.raises(ValueError, match="every"):
        accumulate_gradients_(params, sums, 0, 0)


def test_the_partial_sum_survives_a_checkpoint_round_trip():
    """A fit resumed between two releases hands Adam the same mean as one not interrupted."""
    grads = _grads(2, seed=1)
    straight, resumed = (GroupGradientAccumulation(["deformer"], every=2) for _ in range(2))
    p1, p2 = (torch.zeros(4, 3, requires_grad=True), torch.zeros(5, requires_grad=True))
    q1, q2 = (torch.zeros(4, 3, requires_grad=True), torch.zeros(5, requires_grad=True))
    straight_opt = torch.optim.SGD([{"params": [p1, p2], "name": "deformer"}], lr=1.0)
    first_opt = torch.optim.SGD([{"params": [q1, q2], "name": "deformer"}], lr=1.0)
    for g in grads:
        p1.grad, p2.grad = g[0].clone(), g[1].clone()
        straight.on_before_optimizer_step(None, None, straight_opt)
    q1.grad, q2.grad = grads[0][0].clone(), grads[0][1].clone()
    resumed.on_before_optimizer_step(None, None, first_opt)
    restored = GroupGradientAccumulation(["deformer"], every=2)
    restored.load_state_dict(resumed.state_dict())
    q1.grad, q2.grad = grads[1][0].clone(), grads[1][1].clone()
    restored.on_before_optimizer_step(None, None, first_opt)
    torch.testing.assert_close(q1.grad, p1.grad)
    torch.testing.assert_close(q1.grad, (grads[0][0] + grads[1][0]) / 2)
    assert restored.count == 0


def test_only_the_named_groups_wait():
    deformer, other = torch.zeros(2, requires_grad=True), torch.zeros(2, requires_grad=True)
    optimiser = torch.optim.SGD([{"params": [deformer], "name": "mlp"},
                                 {"params": [other], "name": "mean_offset"}], lr=1.0)
    deformer.grad, other.grad = torch.ones(2), torch.ones(2)
    GroupGradientAccumulation(["mlp"], every=2).on_before_optimizer_step(None, None, optimiser)
    assert deformer.grad is None
    torch.testing.assert_close(other.grad, torch.ones(2))
