
import lightning as L
import pytest
import torch

from ra3.data import CodeDataModule
from ra3.errors import Ra3Error
from ra3.em import EStepModule
from ra3.policy.rl import group_advantages

from conftest import TINY_LLAMA


class _Rewards(L.Callback):
    def __init__(self):
        self.rewards, self.thoughts = [], []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.rewards.append(float(trainer.callback_metrics["estep/reward_mean"]))
        self.thoughts.append(float(trainer.callback_metrics["estep/thoughts_per_program"]))


def _trainer(steps, callbacks=(), **kw):
    return L.Trainer(accelerator="cpu", max_steps=steps, logger=False, enable_checkpointing=False,
                     enable_progress_bar=False, enable_model_summary=False, callbacks=list(callbacks),
                     num_sanity_val_steps=0, limit_val_batches=0, **kw)


def test_group_advantages():
    r = torch.tensor([1.0, 1.0, 1.0, 0.0, 2.0, 4.0])
    torch.testing.assert_close(group_advantages(r, 3, "mean"), torch.tensor([0.0, 0.0, 0.0, -2.0, 0.0, 2.0]))
    torch.testing.assert_close(group_advantages(r, 3, "rloo"), torch.tensor([0.0, 0.0, 0.0, -3.0, 0.0, 3.0]))
    scaled = group_advantages(r, 3, "mean", scale=True)
    assert scaled[:3].abs().max() == 0 and scaled[5] == pytest.approx(1.0, rel=1e-4)


def test_bad_estep_config_is_a_one_line_error_before_training(world_dir):
    tok = str(world_dir / "tokenizer")
    for kwargs, message in [({"thought_cost": -0.1}, "thought_cost"), ({"group_size": 1}, "group_size"),
                            ({"alpha": 2.0}, "alpha"), ({"advantage": "ppo"}, "advantage")]:
        with pytest.raises(Ra3Error, match=message):
            EStepModule(tokenizer=tok, model_config=TINY_LLAMA, **kwargs)


def test_estep_reward_rises_on_the_skill_world(world_dir):
    torch.manual_seed(0)
    module = EStepModule(tokenizer=str(world_dir / "tokenizer"), model_config=TINY_LLAMA, group_size=4,
                         learning_rate=3e-3, max_thought_tokens=6, scale_advantages=True, init_seed=0)
    assert module.reference is None  # beta = 0: no reference copy
    data = CodeDataModule(train_files=[str(world_dir / "midtrain.jsonl")], program_batch_size=4)
    history = _Rewards()
    data.connect(tokenizer=module.tokenizer, view=module.data_view)
    _trainer(16, [history], overfit_batches=1).fit(module, data)
    first, last = sum(history.rewards[:4]) / 4, sum(history.rewards[-4:]) / 4
    assert last > first + 1.0, history.rewards
    assert sum(history.thoughts[-4:]) < sum(history.thoughts[:4])  # random thoughts cost c and hurt: fewer of them


def test_a_datamodule_serving_another_view_is_one_clear_error(world_dir):
    """The recipe connects the data (``data.connect``); fitting without it stops before a batch of the wrong kind."""
    module = EStepModule(tokenizer=str(world_dir / "tokenizer"), model_config=TINY_LLAMA, group_size=2)
    data = CodeDataModule(train_files=[str(world_dir / "midtrain.jsonl")], program_batch_size=2)
    with pytest.raises(Ra3Error, match=r"EStepModule reads 'programs' but the datamodule serves 'tokens': call "
                                       r"data.connect\(tokenizer=module.tokenizer, view=module.data_view\)"):
        _trainer(1).fit(module, data)


def test_ppo_epochs_and_reference_kl(world_dir):
    module = EStepModule(tokenizer=str(world_dir / "tokenizer"), model_config=TINY_LLAMA, group_size=2, ppo_epochs=2,
                         beta=0.1, max_thought_tokens=4)
    assert module.reference is not None and not any(p.requires_grad for p in module.reference.parameters())
    data = CodeDataModule(train_files=[str(world_dir / "midtrain.jsonl")], program_batch_size=2)
    data.connect(tokenizer=module.tokenizer, view=module.data_view)
    trainer = _trainer(2)
    trainer.fit(module, data)
    m = trainer.callback_metrics
    assert m["estep/kl"] >= 0 and 0 <= m["estep/clip_frac"] <= 1
    assert 0 <= m["estep/boundary_f1"] <= 1 and m["estep/expert_nll_without_thoughts"] > 0


def test_estep_surrogate_is_the_shared_clipped_surrogate_over_latent_actions():
    """The E-step's loss — the token-level mean over every latent action of ``-min(r A, clip(r) A)`` — is
    ``policy_gradient_loss`` with each action a one-token completion (``dapo``): same loss, clip fraction, gradient."""
    from ra3.policy.rl import policy_gradient_loss

    torch.manual_seed(0)
    new = torch.randn(50, requires_grad=True)
    old, adv, eps = new.detach() + 0.3 * torch.randn(50), torch.randn(50), 0.2
    ratio = torch.exp(new - old)
    clipped = ratio.clamp(1 - eps, 1 + eps)
    flat = -torch.min(ratio * adv, clipped * adv).sum() / 50
    loss, clip = policy_gradient_loss(new[:, None], old[:, None], adv, torch.ones(50, 1), "dapo", eps, eps, 1)
    assert torch.equal(loss, flat) and 0 < clip.item() < 1
    assert clip.item() == ((ratio - clipped).abs() > 1e-6).float().mean().item()
    assert torch.equal(torch.autograd.grad(loss, new)[0], torch.autograd.grad(flat, new)[0])
