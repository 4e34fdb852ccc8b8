"""Rotation helpers on numpy arrays.

Convention (one for the whole project): quaternions are **w x y z** (scalar first), unit
norm, and a quaternion ``q_ab`` rotates vectors from frame b into frame a
(``v_a = q_ab * v_b * conj(q_ab)``). An IMU quaternion is sensor-to-world; a bone
orientation is bone-to-world. Every function broadcasts over leading axes: ``... x 4``
quaternions, ``... x 3`` vectors, ``... x 3 x 3`` matrices.
"""

from __future__ import annotations

import numpy as np

IDENTITY_QUAT = np.array([1.0, 0.0, 0.0, 0.0])


def quat_normalize(q: np.ndarray) -> np.ndarray:
    """... x 4 -> ... x 4 unit quaternions with w >= 0 (the canonical hemisphere)."""
    q = np.asarray(q, dtype=np.float64)
    q = q / np.linalg.norm(q, axis=-1, keepdims=True)
    return np.where(q[..., :1] < 0, -q, q)


def quat_conj(q: np.ndarray) -> np.ndarray:
    """Inverse of a unit quaternion, ... x 4."""
    return np.asarray(q) * np.array([1.0, -1.0, -1.0, -1.0])


def quat_mul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Hamilton product a * b (apply b first, then a), ... x 4."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    aw, ax, ay, az = np.moveaxis(a, -1, 0)
    bw, bx, by, bz = np.moveaxis(b, -1, 0)
    return np.stack(
        (
            aw * bw - ax * bx - ay * by - az * bz,
            aw * bx + ax * bw + ay * bz - az * by,
            aw * by - ax * bz + ay * bw + az * bx,
            aw * bz + ax * by - ay * bx + az * bw,
        ),
        axis=-1,
    )


def quat_rotate(q: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Rotate vectors v (... x 3) by unit quaternions q (... x 4)."""
    q = np.asarray(q, dtype=np.float64)
    v = np.asarray(v, dtype=np.float64)
    w = q[..., :1]
    u = q[..., 1:]
    t = 2.0 * np.cross(u, v)
    return v + w * t + np.cross(u, t)


def quat_to_matrix(q: np.ndarray) -> np.ndarray:
    """... x 4 unit quaternions -> ... x 3 x 3 rotation matrices."""
    q = quat_normalize(q)
    w, x, y, z = np.moveaxis(q, -1, 0)
    m = np.stack(
        (
            1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
            2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
            2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
        ),
        axis=-1,
    )
    return m.reshape(q.shape[:-1] + (3, 3))


def matrix_to_quat(m: np.ndarray) -> np.ndarray:
    """... x 3 x 3 rotation matrices -> ... x 4 unit quaternions (w >= 0), numerically stable."""
    m = np.asarray(m, dtype=np.float64)
    batch = m.shape[:-2]
    m = m.reshape(-1, 3, 3)
    tr = m[:, 0, 0] + m[:, 1, 1] + m[:, 2, 2]
    # four candidate formulas; pick the one with the largest denominator per matrix
    cand = np.stack((tr, m[:, 0, 0], m[:, 1, 1], m[:, 2, 2]), axis=-1)
    best = np.argmax(cand, axis=-1)
    q = np.empty((m.shape[0], 4))
    for k in range(4):
        sel = best == k
        if not np.any(sel):
            continue
        r = m[sel]
        if k == 0:
            s = np.sqrt(1.0 + tr[sel]) * 2
            q[sel] = np.stack((0.25 * s, (r[:, 2, 1] - r[:, 1, 2]) / s, (r[:, 0, 2] - r[:, 2, 0]) / s, (r[:, 1, 0] - r[:, 0, 1]) / s), -1)
        elif k == 1:
            s = np.sqrt(1.0 + r[:, 0, 0] - r[:, 1, 1] - r[:, 2, 2]) * 2
            q[sel] = np.stack(((r[:, 2, 1] - r[:, 1, 2]) / s, 0.25 * s, (r[:, 0, 1] + r[:, 1, 0]) / s, (r[:, 0, 2] + r[:, 2, 0]) / s), -1)
        elif k == 2:
            s = np.sqrt(1.0 + r[:, 1, 1] - r[:, 0, 0] - r[:, 2, 2]) * 2
            q[sel] = np.stack(((r[:, 0, 2] - r[:, 2, 0]) / s, (r[:, 0, 1] + r[:, 1, 0]) / s, 0.25 * s, (r[:, 1, 2] + r[:, 2, 1]) / s), -1)
        else:
            s = np.sqrt(1.0 + r[:, 2, 2] - r[:, 0, 0] - r[:, 1, 1]) * 2
            q[sel] = np.stack(((r[:, 1, 0] - r[:, 0, 1]) / s, (r[:, 0, 2] + r[:, 2, 0]) / s, (r[:, 1, 2] + r[:, 2, 1]) / s, 0.25 * s), -1)
    return quat_normalize(q).reshape(batch + (4,))


def quat_from_axis_angle(axis: np.ndarray, angle_rad: np.ndarray) -> np.ndarray:
    """Axis (... x 3, need not be unit) and angle (..., radians) -> ... x 4."""
    axis = np.asarray(axis, dtype=np.float64)
    axis = axis / np.linalg.norm(axis, axis=-1, keepdims=True)
    half = 0.5 * np.asarray(angle_rad, dtype=np.float64)[..., None]
    return np.concatenate((np.cos(half), np.sin(half) * axis), axis=-1)


def quat_from_rotvec(rotvec: np.ndarray) -> np.ndarray:
    """Rotation vectors (... x 3, radians) -> ... x 4."""
    rotvec = np.asarray(rotvec, dtype=np.float64)
    angle = np.linalg.norm(rotvec, axis=-1, keepdims=True)
    half = 0.5 * angle
    # sin(x/2)/x with its limit 1/2 at 0
    k = np.where(angle > 1e-12, np.sin(half) / np.where(angle > 1e-12, angle, 1.0), 0.5)
    return np.concatenate((np.cos(half), k * rotvec), axis=-1)


def quat_to_rotvec(q: np.ndarray) -> np.ndarray:
    """... x 4 -> ... x 3 rotation vectors (radians, angle in [0, pi])."""
    q = quat_normalize(q)
    s = np.linalg.norm(q[..., 1:], axis=-1, keepdims=True)
    angle = 2.0 * np.arctan2(s, q[..., :1])
    k = np.where(s > 1e-12, angle / np.where(s > 1e-12, s, 1.0), 2.0)
    return k * q[..., 1:]


def quat_angle(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Angle in radians between two orientations, ... (in [0, pi])."""
    d = np.abs(np.sum(quat_normalize(a) * quat_normalize(b), axis=-1))
    return 2.0 * np.arccos(np.clip(d, 0.0, 1.0))


def quat_slerp(a: np.ndarray, b: np.ndarray, t: np.ndarray | float) -> np.ndarray:
    """Spherical interpolation from a (t = 0) to b (t = 1) along the short arc, ... x 4."""
    a = quat_normalize(a)
    b = quat_normalize(b)
    t = np.asarray(t, dtype=np.float64)[..., None] if np.ndim(t) else float(t)
    dot = np.sum(a * b, axis=-1, keepdims=True)
    b = np.where(dot < 0, -b, b)
    dot = np.abs(dot)
    theta = np.arccos(np.clip(dot, -1.0, 1.0))
    sin_theta = np.sin(theta)
    near = sin_theta < 1e-6
    safe = np.where(near, 1.0, sin_theta)
    wa = np.where(near, 1.0 - t, np.sin((1.0 - t) * theta) / safe)
    wb = np.where(near, t, np.sin(t * theta) / safe)
    return quat_normalize(wa * a + wb * b)


def quat_between(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Shortest rotation taking direction u to direction v (... x 3 each) -> ... x 4."""
    u = np.asarray(u, dtype=np.float64)
    v = np.asarray(v, dtype=np.float64)
    u = u / np.linalg.norm(u, axis=-1, keepdims=True)
    v = v / np.linalg.norm(v, axis=-1, keepdims=True)
    dot = np.sum(u * v, axis=-1, keepdims=True)
    axis = np.cross(u, v)
    q = np.concatenate((1.0 + dot, axis), axis=-1)
    # opposite vectors: rotate 180 degrees about any axis perpendicular to u
    opposite = (1.0 + dot[..., 0]) < 1e-9
    if np.any(opposite):
        helper = np.where(np.abs(u[..., :1]) < 0.9, np.array([1.0, 0, 0]), np.array([0, 1.0, 0]))
        perp = np.cross(u, helper)
        perp = perp / np.linalg.norm(perp, axis=-1, keepdims=True)
        q = np.where(opposite[..., None], np.concatenate((np.zeros_like(dot), perp), axis=-1), q)
    return quat_normalize(q)


def yaw_quat(angle_rad: np.ndarray | float) -> np.ndarray:
    """Rotation about the world's vertical (+Y) axis, ... x 4."""
    angle = np.asarray(angle_rad, dtype=np.float64)
    return quat_from_axis_angle(np.broadcast_to([0.0, 1.0, 0.0], angle.shape + (3,)), angle)


def random_quat(rng: np.random.Generator, shape: tuple[int, ...] = ()) -> np.ndarray:
    """Uniformly distributed random rotations, shape x 4."""
    return quat_normalize(rng.normal(size=shape + (4,)))


# Euler angles in the BVH sense: an order string such as "ZXY" means
# R = R_Z(a0) @ R_X(a1) @ R_Y(a2) (intrinsic rotations, applied left to right as written).

def euler_to_matrix(angles_rad: np.ndarray, order: str) -> np.ndarray:
    """... x 3 angles (radians, in the order of ``order``) -> ... x 3 x 3."""
    angles_rad = np.asarray(angles_rad, dtype=np.float64)
    out = np.broadcast_to(np.eye(3), angles_rad.shape[:-1] + (3, 3)).copy()
    for k, axis in enumerate(order.upper()):
        out = out @ _axis_matrix(axis, angles_rad[..., k])
    return out


def _axis_matrix(axis: str, a: np.ndarray) -> np.ndarray:
    c, s = np.cos(a), np.sin(a)
    one, zero = np.ones_like(a), np.zeros_like(a)
    if axis == "X":
        rows = (one, zero, zero, zero, c, -s, zero, s, c)
    elif axis == "Y":
        rows = (c, zero, s, zero, one, zero, -s, zero, c)
    elif axis == "Z":
        rows = (c, -s, zero, s, c, zero, zero, zero, one)
    else:
        raise ValueError(f"rotation axis must be X, Y or Z, got {axis!r}")
    return np.stack(rows, axis=-1).reshape(a.shape + (3, 3))


def matrix_to_euler(m: np.ndarray, order: str) -> np.ndarray:
    """... x 3 x 3 -> ... x 3 angles (radians) with R = R_order[0] R_order[1] R_order[2].

    Works for any of the six Tait-Bryan orders (all three axes distinct)."""
    order = order.upper()
    if sorted(order) != ["X", "Y", "Z"]:
        raise ValueError(f"rotation order must be a permutation of XYZ, got {order!r}")
    m = np.asarray(m, dtype=np.float64)
    i, j, k = ("XYZ".index(c) for c in order)
    # sign of the permutation (i, j, k): +1 for cyclic orders
    sign = 1.0 if (j - i) % 3 == 1 else -1.0
    a1 = np.arcsin(np.clip(sign * m[..., i, k], -1.0, 1.0))
    a0 = np.arctan2(-sign * m[..., j, k], m[..., k, k])
    a2 = np.arctan2(-sign * m[..., i, j], m[..., i, i])
    # gimbal lock: put all the rotation in the first angle
    lock = np.abs(sign * m[..., i, k]) > 1.0 - 1e-9
    if np.any(lock):
        a2 = np.where(lock, 0.0, a2)
        a0 = np.where(lock, np.arctan2(sign * m[..., k, j], m[..., j, j]), a0)
    return np.stack((a0, a1, a2), axis=-1)


def unwrap_euler(angles_rad: np.ndarray, axis: int = 0) -> np.ndarray:
    """Remove 2*pi jumps along the time axis from a sequence of Euler angles."""
    return np.unwrap(np.asarray(angles_rad, dtype=np.float64), axis=axis)
