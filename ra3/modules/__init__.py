from ra3.modules.estep import EStepModule
from ra3.modules.mstep import MStepModule
from ra3.modules.policy import PolicyModule
from ra3.modules.rlvr import RLVRModule

__all__ = ["PolicyModule", "MStepModule", "EStepModule", "RLVRModule"]
