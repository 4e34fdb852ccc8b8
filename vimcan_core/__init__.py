"""VIMCAN core: skeleton, kinematics, the VIMCAN network, calibration, BVH and metrics.

No Qt here (a test enforces it). Conventions are stated once in ``vimcan_core.skeleton``
(joints, axes, units) and ``vimcan_core.rotations`` (quaternions are w x y z).
"""

__version__ = "0.1.0"
