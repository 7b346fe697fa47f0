"""RA3's EM: the E-step (``EStepModule``, latent rollouts), bootstrapping, the M-step (``MStepModule``) and the loop
that alternates them (``run_em``, the ``ra3 em`` command)."""

from ra3 import lazy_exports

_NAMES = {"EStepModule": "ra3.em.estep", "MStepModule": "ra3.em.mstep", "EMCallback": "ra3.em.callback",
          "EMSettings": "ra3.em.loop", "run_em": "ra3.em.loop", "ThoughtFormat": "ra3.em.latent",
          "LatentConfig": "ra3.em.latent", "bootstrap": "ra3.em.bootstrap"}
__getattr__ = lazy_exports(__name__, _NAMES)
__all__ = list(_NAMES)
