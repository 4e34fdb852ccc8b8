"""Per-sample rotation math on plain Python floats, for driver threads.

``vimcan_core.rotations`` works on numpy arrays and is the reference; for one sample at a
time its array overhead (tens of microseconds per call) dominates a driver's cost, so the
drivers use these float versions of the same formulas (same conventions: w x y z,
sensor-to-world). ``tests/sensors/test_witmotion_protocol.py`` checks them against the
reference.
"""

from __future__ import annotations

import math

Quat = tuple[float, float, float, float]
Vec3 = tuple[float, float, float]


def normalise(q: tuple[float, ...]) -> Quat | None:
    """Unit quaternion with w >= 0, or None when the norm is not finite and positive."""
    w, x, y, z = q
    n = math.sqrt(w * w + x * x + y * y + z * z)
    if not (n > 0.0 and math.isfinite(n)):
        return None
    if w < 0:
        n = -n
    return (w / n, x / n, y / n, z / n)


def rotate(q: Quat, v: tuple[float, ...]) -> Vec3:
    """Rotate vector v by unit quaternion q (v' = q v q*)."""
    w, x, y, z = q
    vx, vy, vz = v
    # t = 2 (u x v); v' = v + w t + u x t
    tx = 2.0 * (y * vz - z * vy)
    ty = 2.0 * (z * vx - x * vz)
    tz = 2.0 * (x * vy - y * vx)
    return (vx + w * tx + (y * tz - z * ty),
            vy + w * ty + (z * tx - x * tz),
            vz + w * tz + (x * ty - y * tx))


def euler_zyx_deg_to_quat(roll_deg: float, pitch_deg: float, yaw_deg: float) -> Quat:
    """q = q_z(yaw) q_y(pitch) q_x(roll), w >= 0 (see ``protocols.witmotion.euler_to_quat``)."""
    hr, hp, hy = math.radians(roll_deg) * 0.5, math.radians(pitch_deg) * 0.5, math.radians(yaw_deg) * 0.5
    cr, sr = math.cos(hr), math.sin(hr)
    cp, sp = math.cos(hp), math.sin(hp)
    cy, sy = math.cos(hy), math.sin(hy)
    q = (cy * cp * cr + sy * sp * sr, cy * cp * sr - sy * sp * cr, cy * sp * cr + sy * cp * sr, sy * cp * cr - cy * sp * sr)
    return q if q[0] >= 0 else (-q[0], -q[1], -q[2], -q[3])
