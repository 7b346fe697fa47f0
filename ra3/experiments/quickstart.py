"""``ra3 quickstart``: the study's smallest run — does RA3 beat NTP, on one pre-training seed?

One base of the skill world (pre-trained from scratch), then NTP, the oracle (the ground-truth thoughts: the
positive control) and RA3 mid-training with the same M-step budget, RLVR from each, and every model scored on the
held-out evaluation split. It is ``ra3 study`` with one base (:mod:`ra3.experiments.study`: the same world, stages, resume and
report): its intervals are bootstrap intervals over the evaluation tasks, so they say how sure *this base's*
comparison is, not whether another pre-training seed would agree — ``ra3 study`` answers that over five.
"""

from __future__ import annotations

from ra3.experiments.study import Study

# quickstart preset -> (study preset, study settings)
PRESETS = {"tiny": ("quickstart", {}), "test": ("test", {"wandb": True})}


def quickstart(out: str = "artifacts/quickstart", preset: str = "tiny", seed: int = 0) -> Study:
    """The quickstart's study (run it with ``.run()``).

    Args:
        out: the run's folder (re-running with the same folder resumes).
        preset: ``tiny`` (the CPU quickstart: about 11 min and 1.1 GiB on 2 cores) or ``test`` (CI, about a minute).
        seed: the base's pre-training seed (the world is the study's, whatever the seed).
    """
    if preset not in PRESETS:
        from ra3.errors import Ra3Error

        raise Ra3Error(f"unknown quickstart preset {preset!r}; choose from {', '.join(PRESETS)}")
    study_preset, settings = PRESETS[preset]
    return Study(out, study_preset, bases=1, first_seed=seed, settings=dict(settings))
