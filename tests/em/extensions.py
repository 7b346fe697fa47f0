"""User extensions used by the tests: one subclass each, plugged in by class_path."""


from ra3.em import EStepModule
from ra3.rlvr import RLVRModule
from ra3.em.latent import ThoughtFormat


class FlatRewardEStep(EStepModule):
    """A custom E-step reward: every annotation scores 1 per thought (an external scorer would go here)."""

    def rewards(self, rollout, plain_logprob):
        return rollout.n_thoughts.float()


class ArrowThoughts(ThoughtFormat):
    """A custom thought format: ``# -> <intent>``."""

    def render(self, text, indent):
        return "\n" + indent + "# -> " + " ".join(text.split())


class LengthRewardRLVR(RLVRModule):
    """A custom RLVR reward (dense, so a random tiny model gets a signal): completion length in characters / 100."""

    def reward_function(self):
        return lambda prompts, completions, **columns: [len(c) / 100 for c in completions]
