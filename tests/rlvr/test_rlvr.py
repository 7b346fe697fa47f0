import lightning as L
import pytest
import torch

from ra3.data import CodeDataModule
from ra3.errors import Ra3Error
from ra3.rlvr import RLVRModule
from ra3.policy.rl import policy_gradient_loss, rl_advantages
from ra3.rlvr.rewards import FormatReward, UnitTestReward, WeightedSum



def _toy():
    torch.manual_seed(0)
    N, T = 4, 5
    logp = -torch.rand(N, T)
    old = logp + 0.3 * torch.randn(N, T)
    adv = torch.tensor([1.0, -0.5, 2.0, 0.0])
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0], [1, 1, 0, 0, 0]], dtype=torch.bool)
    return logp, old, adv, mask


def _reference(logp, old, adv, mask, kind, lo, hi, max_new):
    """The formulas written out token by token."""
    N, T = logp.shape
    per_seq, total, count = [], 0.0, 0
    for i in range(N):
        s, n = 0.0, 0
        for t in range(T):
            if mask[i, t]:
                r = float(torch.exp(logp[i, t] - old[i, t]))
                a = float(adv[i])
                term = -min(r * a, min(max(r, 1 - lo), 1 + hi) * a)
                s, n = s + term, n + 1
        per_seq.append(s / n)
        total, count = total + s, count + n
    return {"grpo": sum(per_seq) / N, "dr_grpo": total / (N * max_new), "dapo": total / count}[kind]


@pytest.mark.parametrize("kind,lo,hi", [("grpo", 0.2, 0.2), ("dr_grpo", 0.2, 0.2), ("dapo", 0.2, 0.28)])
def test_each_loss_variant_equals_its_formula(kind, lo, hi):
    logp, old, adv, mask = _toy()
    loss, clip = policy_gradient_loss(logp, old, adv, mask, kind, lo, hi, max_new_tokens=8)
    assert loss.item() == pytest.approx(_reference(logp, old, adv, mask, kind, lo, hi, 8), rel=1e-5)
    assert 0 < clip.item() < 1  # the toy ratios straddle the clip range


def test_advantages_are_zero_for_constant_groups_and_skip_missing_rewards():
    r = torch.tensor([1.0, 1.0, 1.0, 0.0, 1.0, 0.0])
    valid = torch.tensor([True, True, True, True, True, False])
    adv = rl_advantages(r, valid, 3, "none")
    torch.testing.assert_close(adv, torch.tensor([0.0, 0.0, 0.0, -0.5, 0.5, 0.0]))
    scaled = rl_advantages(r, valid, 3, "group")
    assert scaled[:3].abs().max() == 0 and scaled[5] == 0 and scaled[4] > 0.5


def test_a_sample_without_reward_gets_no_gradient():
    logp, old, adv, mask = _toy()
    logp.requires_grad_(True)
    valid = torch.tensor([True, False, True, True])
    loss, _ = policy_gradient_loss(logp, old, adv * valid, mask & valid[:, None], "dapo", 0.2, 0.28, 8)
    loss.backward()
    assert logp.grad[1].abs().max() == 0 and logp.grad[0].abs().max() > 0


def test_identical_rows_run_once_with_the_full_batchs_loss_and_gradient(tiny_model_dir):
    """A batch whose rows repeat (a group's samples often coincide) goes through the model as its distinct rows
    only, and the per-token log-probs, entropy, a loss built on them and its gradient equal the full batch's."""
    from ra3.policy.rl import distinct_rows

    module = RLVRModule(init_from=str(tiny_model_dir), num_generations=2, temperature=0.7)
    pad = module.tokenizer.pad_token_id
    a, b = [1, 5, 6, 7, 8, 9], [1, 5, 6, 4]  # one prompt [1, 5], two completions (b is shorter: right padding)
    ids = torch.tensor([a, b + [pad] * 2, a, a])
    attention = (torch.arange(6)[None] < torch.tensor([6, 4, 6, 6])[:, None]).long()
    completion = attention.bool() & (torch.arange(6)[None] >= 2)
    rows, inverse = distinct_rows(ids, attention, completion)
    assert sorted(rows.tolist()) == [0, 1] and torch.equal(ids[rows][inverse], ids)
    seen = []
    hook = module.model.register_forward_pre_hook(lambda m, args, kwargs: seen.append(kwargs["input_ids"].shape[0]),
                                                  with_kwargs=True)
    weights = torch.tensor([[0.5], [-1.0], [2.0], [0.25]])
    grads = []
    for run in (module.token_logprobs, lambda *x, **k: module._row_logprobs(*x, **k)):
        module.model.zero_grad()
        logp, entropy = run(module.model, ids, attention, completion, with_entropy=True)
        (logp * weights).sum().backward()
        grads.append([p.grad.clone() for p in module.model.parameters()])
        if run == module.token_logprobs:
            deduped = logp.detach(), entropy
    hook.remove()
    assert seen == [2, 4]
    torch.testing.assert_close(deduped[0], logp.detach(), atol=1e-5, rtol=0)
    torch.testing.assert_close(deduped[1], entropy, atol=1e-5, rtol=0)
    assert deduped[0][1, 3:].abs().max() == 0  # the short row's padding stays 0
    for g_once, g_full in zip(*grads):
        torch.testing.assert_close(g_once, g_full, atol=1e-5, rtol=1e-4)


def test_config_errors_and_reference_only_with_beta(tiny_model_dir):
    with pytest.raises(Ra3Error, match="num_generations"):
        RLVRModule(init_from=str(tiny_model_dir), num_generations=1)
    with pytest.raises(Ra3Error, match="loss_type"):
        RLVRModule(init_from=str(tiny_model_dir), loss_type="ppo")
    assert RLVRModule(init_from=str(tiny_model_dir)).reference is None
    assert RLVRModule(init_from=str(tiny_model_dir), beta=0.04).reference is not None


def test_reward_functions_on_the_sandbox(world_dir):
    import json
    row = json.loads(open(world_dir / "rl.jsonl").readline())
    body = row["completion"]
    columns = {"test_cases": [row["test_cases"]] * 3, "entry_point": ["solve"] * 3}
    prompts = [row["prompt"]] * 3
    completions = [body, "\n    return xs[::-1] + [42]", "\n    return (("]
    logged = {}
    assert UnitTestReward()(prompts, completions, **columns, log_extra=logged.__setitem__) == [1.0, 0.0, 0.0]
    assert logged == {"status": ["passed", "failed", "syntax_error"]}
    assert FormatReward()(prompts, completions) == [1.0, 1.0, 0.0]
    combined = WeightedSum([(UnitTestReward(), 1.0), (FormatReward(), 0.5)])(prompts, completions, **columns)
    assert combined == [1.5, 0.5, 0.0]


def test_assert_rewards_are_judged_on_the_host():
    """RL rows with MBPP-style asserts: a completion returning an always-equal object (which passes the asserts
    run in its own process) earns nothing; the real solution earns the reward."""
    prompt = "def add(a, b):\n"
    tests = ["assert add(1, 2) == 3", "assert add(-1, 1) == 0"]
    forged = "    class Y:\n        def __eq__(self, other): return True\n    return Y()\n"
    reward = UnitTestReward()([prompt] * 2, ["    return a + b\n", forged], tests=[tests] * 2)
    assert reward == [1.0, 0.0]


def letter_share(prompts, completions, **columns):
    """A dense reward a random tiny model can climb: the share of a completion's non-blank characters that
    are letters (random token soup is about half punctuation and digits)."""
    out = []
    for text in completions:
        chars = [c for c in text if not c.isspace()]
        out.append(sum(c.isalpha() for c in chars) / len(chars) if chars else 0.0)
    return out


class LetterShareRLVR(RLVRModule):
    def reward_function(self):
        return letter_share


class NoneForOddSamples(RLVRModule):
    def reward_function(self):
        return lambda prompts, completions, **kw: [None if i % 2 else 1.0 for i in range(len(completions))]


def _fit(module, world_dir, steps, history=None):
    data = CodeDataModule(rl_files=[str(world_dir / "rl.jsonl")], program_batch_size=4)
    callbacks = [history] if history else []
    trainer = L.Trainer(accelerator="cpu", max_steps=steps, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                        limit_val_batches=0, callbacks=callbacks, overfit_batches=1)
    data.connect(tokenizer=module.tokenizer, view=module.data_view)
    trainer.fit(module, data)
    return trainer


class _Rewards(L.Callback):
    def __init__(self):
        self.values = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.values.append(float(trainer.callback_metrics["rlvr/reward_mean"]))


def test_short_rlvr_run_raises_the_training_reward(tiny_model_dir, world_dir):
    torch.manual_seed(0)
    module = LetterShareRLVR(init_from=str(tiny_model_dir), num_generations=4, max_new_tokens=12, learning_rate=1e-2,
                         loss_type="dapo", min_lr_ratio=1.0)
    history = _Rewards()
    _fit(module, world_dir, 16, history)
    first, last = sum(history.values[:4]) / 4, sum(history.values[-4:]) / 4
    assert last - first > 0.03, history.values  # measured over 5 seeds: +0.065 to +0.087


def test_rlvr_trains_the_same_with_either_sampler(tiny_model_dir, world_dir):
    """RaggedEngine and HFEngine draw the same completions, so two GRPO steps give the same rewards and weights;
    so does the compiled RaggedEngine here (its log-probs are ~1e-5 from the eager ones: no near tie decides a draw)."""
    from ra3.rollout import ragged_cache as ragged

    runs, calls = {}, ragged.compiled_decode_step.cache_info()
    for engine in ("hf", "ragged", "ragged_compiled"):
        module = LetterShareRLVR(init_from=str(tiny_model_dir), num_generations=4, max_new_tokens=12, learning_rate=1e-2,
                                 rollout_engine=engine)
        history = _Rewards()
        _fit(module, world_dir, 2, history)
        runs[engine] = (history.values, torch.cat([p.detach().flatten() for p in module.model.parameters()]))
    after = ragged.compiled_decode_step.cache_info()
    assert after.hits + after.misses > calls.hits + calls.misses  # the compiled steps ran inside the fit
    assert runs["hf"][0] == runs["ragged"][0] == runs["ragged_compiled"][0]
    torch.testing.assert_close(runs["hf"][1], runs["ragged"][1], atol=1e-6, rtol=0)
    torch.testing.assert_close(runs["ragged_compiled"][1], runs["ragged"][1], atol=1e-6, rtol=0)


def test_samples_without_reward_are_left_out(tiny_model_dir, world_dir):
    module = NoneForOddSamples(init_from=str(tiny_model_dir), num_generations=2, max_new_tokens=6)
    trainer = _fit(module, world_dir, 1)
    assert trainer.callback_metrics["rlvr/no_reward_frac"] == pytest.approx(0.5)
    assert trainer.callback_metrics["rlvr/zero_std_frac"] >= 0


def test_vllm_engine_without_vllm_or_gpu_is_a_clear_error(tiny_model_dir):
    module = RLVRModule(init_from=str(tiny_model_dir), rollout_engine="vllm")
    with pytest.raises(Ra3Error, match="rollout_engine 'vllm' needs"):
        module.on_fit_start()
    module._pool.close()
    with pytest.raises(Ra3Error, match="rollout_engine must be"):
        RLVRModule(init_from=str(tiny_model_dir), rollout_engine="sglang")


def test_reward_funcs_and_weights_from_the_config(tiny_model_dir, world_dir):
    """TRL-style ``reward_funcs`` + ``reward_weights``: built-in names, a class by dotted path, ``{class_path,
    init_args}``; summed with the weights; bad entries are one-line errors."""

    module = RLVRModule(init_from=str(tiny_model_dir), reward_funcs=["format", "ra3.rlvr.rewards.FormatReward",
                        {"class_path": "ra3.rlvr.rewards.UnitTestReward", "init_args": {"partial": True}}],
                        reward_weights=[0.5, 0.25, 2.0])
    fns = [f for f, _ in module.reward_function().functions]
    assert isinstance(fns[0], FormatReward) and isinstance(fns[1], FormatReward) and fns[2].partial
    prompts, completions = ["def f(x):\n"] * 3, ["    return x\n", "    return (\n", ""]
    fmt = FormatReward()(prompts, completions)
    only_format = RLVRModule(init_from=str(tiny_model_dir), reward_funcs=["format", "ra3.rlvr.rewards.FormatReward"],
                             reward_weights=[0.5, 0.25])
    assert only_format.reward_function()(prompts, completions) == pytest.approx([0.75 * v for v in fmt])
    for kwargs, message in ((dict(reward_funcs=["no_such.module.fn"]), "cannot be imported"),
                            (dict(reward_funcs=["format"], reward_weights=[1.0, 2.0]), "one weight per reward_funcs"),
                            (dict(reward_funcs=["format"], format_weight=0.1), "format_weight applies to the default"),
                            (dict(reward_funcs=["ra3.rlvr.rewards.UnitTestReward.__init__"]), "cannot be imported|callable")):
        with pytest.raises(Ra3Error, match=message):
            RLVRModule(init_from=str(tiny_model_dir), **kwargs)
    # a fit on the format reward alone: no sandbox statuses, the reward is the format score
    trainer = _fit(RLVRModule(init_from=str(tiny_model_dir), num_generations=2, max_new_tokens=6,
                              reward_funcs=["format"]), world_dir, 1)
    assert 0.0 <= float(trainer.callback_metrics["rlvr/reward_mean"]) <= 1.0
    assert not [k for k in trainer.callback_metrics if k.startswith("rlvr/status_") or k == "rlvr/pass_rate"]
    trainer = _fit(RLVRModule(init_from=str(tiny_model_dir), num_generations=2, max_new_tokens=6), world_dir, 1)
    assert 0.0 <= float(trainer.callback_metrics["rlvr/pass_rate"]) <= 1.0  # the unit tests report statuses


def length_with_logs(prompts, completions, log_extra=None, log_metric=None, **columns):
    """A reward that reports through the explicit hooks (TRL's ``log_extra``/``log_metric``)."""
    log_extra("chars", [len(c) for c in completions])
    log_metric("mean_chars", sum(map(len, completions)) / len(completions))
    return [float(len(c) > 3) for c in completions]


def test_reward_functions_report_statuses_and_extras_through_explicit_hooks(tiny_model_dir, world_dir):
    """No side channel: the sandbox statuses and a custom function's columns/metrics come back through the
    ``log_extra``/``log_metric`` arguments of the call, per sample and in sample order."""
    module = RLVRModule(init_from=str(tiny_model_dir), num_generations=2, max_new_tokens=6,
                        reward_funcs=["unit_tests", "test_rlvr.length_with_logs"], reward_weights=[1.0, 0.5])
    assert module.unit_tests is None  # built when fit starts, with the fit's sandbox pool
    trainer = _fit(module, world_dir, 1)
    assert module.unit_tests.pool is module._pool and module.reward_function().functions[0][0] is module.unit_tests
    n = 4 * 2
    assert sorted(module.extra_columns) == ["chars", "status"] and all(len(v) == n for v in module.extra_columns.values())
    assert set(module.extra_columns["status"]) <= {"passed", "failed", "syntax_error", "runtime_error", "timeout"}
    counts = {k[len("rlvr/status_"):]: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("rlvr/status_")}
    assert sum(counts.values()) == n
    assert float(trainer.callback_metrics["rlvr/mean_chars"]) == pytest.approx(sum(module.extra_columns["chars"]) / n)

    def bad_length(prompts, completions, log_extra=None, **kw):
        log_extra("oops", [1])
        return [0.0] * len(completions)

    class BadLog(RLVRModule):
        def reward_function(self):
            return bad_length

    with pytest.raises(Ra3Error, match=r"log_extra\('oops'\) got 1 values for 4 completions"):
        _fit(BadLog(init_from=str(tiny_model_dir), num_generations=2, max_new_tokens=6, generation_batch_size=4), world_dir, 1)


class _Metrics(L.Callback):
    def __init__(self):
        self.rows = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.rows.append({k: float(v) for k, v in trainer.callback_metrics.items()})


class UntemperedLoss(LetterShareRLVR):
    """The defect this guards against: the loss's log-probs from the untempered logits."""

    def token_logprobs(self, *args, **kwargs):
        t = self.hparams.temperature
        self.hparams.temperature = 1.0
        try:
            return super().token_logprobs(*args, **kwargs)
        finally:
            self.hparams.temperature = t


def test_the_loss_takes_the_samplers_log_probs_at_any_temperature(tiny_model_dir, world_dir):
    """At T = 0.7 the log-probs the loss is built from equal the ones the sampler drew the tokens with (the
    sampler reports them, ``SamplingConfig.logprobs``); untempered log-probs (the old defect) are far off."""
    gaps = {}
    for cls in (LetterShareRLVR, UntemperedLoss):
        seen = _Metrics()
        _fit(cls(init_from=str(tiny_model_dir), num_generations=2, max_new_tokens=10, temperature=0.7), world_dir, 1, seen)
        gaps[cls.__name__] = seen.rows[0]["rlvr/sampler_logp_gap"]
    assert gaps["LetterShareRLVR"] < 1e-4
    assert gaps["UntemperedLoss"] > 0.01, gaps  # measured 0.039 (a random model is near uniform), vs 3e-7


def test_soft_overlong_penalty_follows_dapo():
    from ra3.rlvr.module import overlong_reward

    assert overlong_reward(1.0, 150, 200, 0, 1.0) == 1.0  # off
    assert overlong_reward(1.0, 150, 200, 40, 1.0) == 1.0  # before the buffer
    assert overlong_reward(1.0, 170, 200, 40, 1.0) == pytest.approx(0.75)
    assert overlong_reward(0.0, 200, 200, 40, 0.5) == pytest.approx(-0.5)
    assert overlong_reward(None, 200, 200, 40, 1.0) is None
    with pytest.raises(Ra3Error, match="overlong_buffer"):
        RLVRModule(init_from="unused", max_new_tokens=16, overlong_buffer=16)


def constant_for_even_tasks(prompts, completions, **columns):
    """Every sample of an even-numbered task gets 1.0 (a zero-variance group); the others the letter share."""
    ids = columns["task_id"]
    share = letter_share(prompts, completions)
    return [1.0 if int(t.rsplit("/", 1)[-1]) % 2 == 0 else s for t, s in zip(ids, share)]


class HalfConstantRLVR(RLVRModule):
    def reward_function(self):
        return constant_for_even_tasks


def test_dynamic_sampling_replaces_groups_without_reward_variance(tiny_model_dir, world_dir):
    seen = _Metrics()
    module = HalfConstantRLVR(init_from=str(tiny_model_dir), num_generations=2, max_new_tokens=8, dynamic_sampling=True,
                              max_sampling_rounds=6)
    _fit(module, world_dir, 2, seen)
    for row in seen.rows:
        assert row["rlvr/kept_groups"] == 4 and row["rlvr/zero_std_frac"] == 0
        assert row["rlvr/prompts_sampled"] > 4 and row["rlvr/sampling_rounds"] >= 2
    # off: the same batch keeps its constant groups
    seen = _Metrics()
    _fit(HalfConstantRLVR(init_from=str(tiny_model_dir), num_generations=2, max_new_tokens=8), world_dir, 1, seen)
    assert seen.rows[0]["rlvr/zero_std_frac"] > 0 and seen.rows[0]["rlvr/prompts_sampled"] == 4


def test_auto_engine_compiles_only_runs_long_enough_to_earn_it_back(tiny_model_dir):
    """``rollout_engine: auto``: the compiled sampler from ``compile_min_steps`` steps on (on a CPU), else eager; an
    explicit engine is kept whatever the length."""
    import lightning as L

    from ra3.rollout.ragged_engine import RaggedEngine

    def engine(steps, **kwargs):
        module = RLVRModule(init_from=str(tiny_model_dir), **kwargs)
        module.trainer = L.Trainer(max_steps=steps, logger=False, enable_checkpointing=False, enable_progress_bar=False)
        return module.engine_name(), module.rollout_engine()

    name, short = engine(20)
    assert name == "ragged" and isinstance(short, RaggedEngine) and not short.compile
    name, long = engine(150)  # 150 x 128 tokens >= 15,000 decoding steps
    assert name == "ragged_compiled" and long.compile
    assert engine(100, max_new_tokens=64)[0] == "ragged" and engine(100, max_new_tokens=200)[0] == "ragged_compiled"
    assert engine(20, compile_min_decode_steps=2000)[0] == "ragged_compiled"
    assert engine(500, rollout_engine="ragged")[0] == "ragged" and engine(-1)[0] == "ragged"  # -1: no step limit
    assert RLVRModule(init_from=str(tiny_model_dir)).engine_name() == "ragged"  # no trainer yet


def test_auto_goes_on_eager_when_the_compile_fails(tiny_model_dir, world_dir, monkeypatch, caplog):
    """A machine where inductor cannot build the step (no C++ compiler, say): ``auto`` warns once and samples with
    the eager engine for the rest of the run; an explicit ``ragged_compiled`` stops with the error."""
    import ra3.rollout.ragged_cache as ragged_cache

    def broken(*args, **kwargs):
        raise RuntimeError("no C++ compiler found")

    monkeypatch.setattr(ragged_cache, "compiled_decode_step", lambda: broken)
    module = LetterShareRLVR(init_from=str(tiny_model_dir), num_generations=2, max_new_tokens=6, compile_min_decode_steps=1)
    with caplog.at_level("WARNING", logger="ra3.rlvr.module"):
        assert _fit(module, world_dir, 2).global_step == 2
    assert module.engine_name() == "ragged"
    assert [r.message.count("no C++ compiler") for r in caplog.records] == [1]
    with pytest.raises(ragged_cache.CompileError, match="no C\\+\\+ compiler"):
        _fit(LetterShareRLVR(init_from=str(tiny_model_dir), num_generations=2, max_new_tokens=6,
                             rollout_engine="ragged_compiled"), world_dir, 1)
