"""Reading BVH motion files, with forward kinematics.

``read_bvh(path) -> BvhMotion`` parses the HIERARCHY and MOTION sections of a BVH file
(plain or ``.gz``) and checks it as it goes: a malformed file raises
``MotionFileError`` naming the file, the line and the problem.

What is handled:

* any rotation order per joint (the order of the ``*rotation`` channels on the joint's
  ``CHANNELS`` line; the root and the other joints may differ);
* position channels on any joint: they *replace* the joint's ``OFFSET`` along their axis
  (as MotionBuilder writes them: the value equals the offset for a rigid bone);
* ``End Site`` blocks: they become joints without channels named ``<parent>_End``;
* mixed line endings (CRLF / LF), TABs, exponent notation;
* any frame rate (``Frame Time``).

Forward kinematics, per frame t and joint j with parent p::

    R_global[j] = R_global[p] @ R_local[j]       R_local = R_{c0}(a0) R_{c1}(a1) R_{c2}(a2)
    pos[j]      = pos[p] + R_global[p] @ t[j]     t = OFFSET, or the position channels

where c0 c1 c2 are the joint's rotation channels in the order written (intrinsic
rotations, as every BVH exporter writes them). Units are those of the file (the reader
does not convert; ``vimcan_core.retarget`` detects centimetres and converts to metres).
"""

from __future__ import annotations

import gzip
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from vimcan_core.errors import MotionFileError
from vimcan_core.rotations import euler_to_matrix, matrix_to_quat

log = logging.getLogger(__name__)

_ROTATION_CHANNELS = ("Xrotation", "Yrotation", "Zrotation")
_POSITION_CHANNELS = ("Xposition", "Yposition", "Zposition")
_VALID_CHANNELS = _ROTATION_CHANNELS + _POSITION_CHANNELS

#: suffix appended to the parent's name to name an End Site
END_SITE_SUFFIX = "_End"


@dataclass(frozen=True)
class BvhJoint:
    """One joint of the hierarchy (an End Site has no channels)."""

    name: str
    parent: int  # index into BvhMotion.joints, -1 for the root
    offset: tuple[float, float, float]  # file units, in the parent's frame
    channels: tuple[str, ...]  # e.g. ("Zrotation", "Xrotation", "Yrotation")
    is_end_site: bool = False

    @property
    def rotation_order(self) -> str:
        """Rotation channel axes in the order written, e.g. ``"ZXY"`` ("" without rotations)."""
        return "".join(c[0].upper() for c in self.channels if c in _ROTATION_CHANNELS)


@dataclass(frozen=True)
class BvhMotion:
    """A parsed BVH file: hierarchy plus the channel values of every frame.

    ``values`` is T x C (C = total number of channels, in file order), in the file's
    units (degrees for rotations).
    """

    path: str
    joints: tuple[BvhJoint, ...]
    frame_time_s: float
    values: np.ndarray  # T x C
    _first_channel: tuple[int, ...] = field(repr=False, default=())

    def __post_init__(self) -> None:
        starts, k = [], 0
        for j in self.joints:
            starts.append(k)
            k += len(j.channels)
        object.__setattr__(self, "_first_channel", tuple(starts))
        if self.values.ndim != 2 or self.values.shape[1] != k:
            raise MotionFileError(f"{self.path}: motion has {self.values.shape} values, expected T x {k} channels")

    # ---- hierarchy ---------------------------------------------------------------------
    @property
    def names(self) -> tuple[str, ...]:
        return tuple(j.name for j in self.joints)

    @property
    def parents(self) -> tuple[int, ...]:
        return tuple(j.parent for j in self.joints)

    @property
    def offsets(self) -> np.ndarray:
        """J x 3 OFFSETs in file units."""
        return np.array([j.offset for j in self.joints], dtype=np.float64)

    @property
    def num_frames(self) -> int:
        return int(self.values.shape[0])

    @property
    def fps(self) -> float:
        return 1.0 / self.frame_time_s

    def index(self, name: str) -> int:
        """Index of a joint by exact name; raises KeyError listing the names."""
        try:
            return self.names.index(name)
        except ValueError:
            raise KeyError(f"{self.path}: no joint named {name!r}; joints are {', '.join(self.names)}") from None

    def channel_values(self, joint: int) -> np.ndarray:
        """T x len(channels) values of one joint."""
        s = self._first_channel[joint]
        return self.values[:, s : s + len(self.joints[joint].channels)]

    # ---- kinematics --------------------------------------------------------------------
    def local_matrices(self, frames: slice | np.ndarray | None = None) -> np.ndarray:
        """T x J x 3 x 3 local rotations (identity for joints without rotation channels)."""
        vals = self.values if frames is None else self.values[frames]
        out = np.broadcast_to(np.eye(3), (vals.shape[0], len(self.joints), 3, 3)).copy()
        for j, joint in enumerate(self.joints):
            order = joint.rotation_order
            if not order:
                continue
            s = self._first_channel[j]
            cols = [s + i for i, c in enumerate(joint.channels) if c in _ROTATION_CHANNELS]
            out[:, j] = euler_to_matrix(np.radians(vals[:, cols]), order)
        return out

    def local_translations(self, frames: slice | np.ndarray | None = None) -> np.ndarray:
        """T x J x 3 translations from the parent (OFFSET, replaced by position channels)."""
        vals = self.values if frames is None else self.values[frames]
        out = np.broadcast_to(self.offsets, (vals.shape[0], len(self.joints), 3)).copy()
        for j, joint in enumerate(self.joints):
            s = self._first_channel[j]
            for i, c in enumerate(joint.channels):
                if c in _POSITION_CHANNELS:
                    out[:, j, _POSITION_CHANNELS.index(c)] = vals[:, s + i]
        return out

    def forward_kinematics(self, frames: slice | np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(global positions T x J x 3 in file units, global rotations T x J x 3 x 3)."""
        local_r = self.local_matrices(frames)
        local_t = self.local_translations(frames)
        glob_r = np.empty_like(local_r)
        pos = np.empty_like(local_t)
        for j, p in enumerate(self.parents):
            if p < 0:
                glob_r[:, j] = local_r[:, j]
                pos[:, j] = local_t[:, j]
            else:
                glob_r[:, j] = glob_r[:, p] @ local_r[:, j]
                pos[:, j] = pos[:, p] + np.einsum("tab,tb->ta", glob_r[:, p], local_t[:, j])
        return pos, glob_r

    def global_positions(self, frames: slice | np.ndarray | None = None) -> np.ndarray:
        """T x J x 3 joint positions in the world, file units."""
        return self.forward_kinematics(frames)[0]

    def global_rotations(self, frames: slice | np.ndarray | None = None) -> np.ndarray:
        """T x J x 4 global joint rotations (wxyz, joint frame to world)."""
        return matrix_to_quat(self.forward_kinematics(frames)[1])

    def rest_positions(self) -> np.ndarray:
        """J x 3 positions of the rest pose (all rotations zero, OFFSETs only), file units."""
        pos = np.zeros((len(self.joints), 3))
        offs = self.offsets
        for j, p in enumerate(self.parents):
            pos[j] = offs[j] if p < 0 else pos[p] + offs[j]
        return pos


# --------------------------------------------------------------------------------------
# parsing


def _open_text(path: Path) -> str:
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                raw = f.read()
        else:
            raw = path.read_bytes()
    except FileNotFoundError:
        raise MotionFileError(f"{path}: no such BVH file") from None
    except (OSError, EOFError) as exc:
        raise MotionFileError(f"{path}: cannot read ({exc})") from exc
    return raw.decode("utf-8", errors="replace")


class _Tokens:
    """Whitespace tokens of the HIERARCHY section with their 1-based line numbers."""

    def __init__(self, lines: list[str], path: str) -> None:
        self.items: list[tuple[str, int]] = []
        self.path = path
        self.pos = 0
        self.end_line = 0
        for n, line in enumerate(lines, start=1):
            if line.strip().upper() == "MOTION":
                self.end_line = n
                break
            self.items.extend((tok, n) for tok in line.split())
        else:
            self.end_line = len(lines) + 1

    def error(self, msg: str, line: int | None = None) -> MotionFileError:
        if line is None:
            line = self.items[min(self.pos, len(self.items) - 1)][1] if self.items else 1
        return MotionFileError(f"{self.path}:{line}: {msg}")

    def next(self, what: str) -> tuple[str, int]:
        if self.pos >= len(self.items):
            raise self.error(f"unexpected end of HIERARCHY, expected {what}", self.end_line)
        tok = self.items[self.pos]
        self.pos += 1
        return tok

    def name(self, what: str, keyword_line: int) -> tuple[str, int]:
        """A joint name: every token left on the keyword's line ('Bip01 L Thigh' has spaces)."""
        if self.pos >= len(self.items) or self.items[self.pos][1] != keyword_line:
            raise self.error(f"expected {what} on the same line", keyword_line)
        parts = []
        while self.pos < len(self.items) and self.items[self.pos][1] == keyword_line:
            parts.append(self.items[self.pos][0])
            self.pos += 1
        if len(parts) > 1 and parts[-1] == "{":  # 'JOINT Arm {' on one line
            parts.pop()
            self.pos -= 1
        return " ".join(parts), keyword_line

    def expect(self, word: str) -> int:
        tok, line = self.next(repr(word))
        if tok != word:
            raise self.error(f"expected {word!r}, found {tok!r}", line)
        return line

    def number(self, what: str) -> float:
        tok, line = self.next(what)
        try:
            v = float(tok)
        except ValueError:
            raise self.error(f"expected a number for {what}, found {tok!r}", line) from None
        if not math.isfinite(v):
            raise self.error(f"{what} is {tok}, expected a finite number", line)
        return v


def _parse_joint(tok: _Tokens, joints: list[BvhJoint], name: str, parent: int, line: int) -> None:
    tok.expect("{")
    tok.expect("OFFSET")
    offset = tuple(tok.number(f"OFFSET of {name!r}") for _ in range(3))
    channels: tuple[str, ...] = ()
    nxt, nline = tok.next("CHANNELS, JOINT, End Site or '}'")
    if nxt == "CHANNELS":
        n_raw, cline = tok.next("channel count")
        try:
            n = int(n_raw)
        except ValueError:
            raise tok.error(f"expected a channel count for {name!r}, found {n_raw!r}", cline) from None
        if not 0 <= n <= 6:
            raise tok.error(f"joint {name!r} has {n} channels, expected 0 to 6", cline)
        chans = []
        for _ in range(n):
            c, cl = tok.next("a channel name")
            if c not in _VALID_CHANNELS:
                raise tok.error(f"unknown channel {c!r} on joint {name!r}; expected one of {', '.join(_VALID_CHANNELS)}", cl)
            if c in chans:
                raise tok.error(f"channel {c!r} repeated on joint {name!r}", cl)
            chans.append(c)
        channels = tuple(chans)
        nxt, nline = tok.next("JOINT, End Site or '}'")
    index = len(joints)
    joints.append(BvhJoint(name=name, parent=parent, offset=offset, channels=channels))  # type: ignore[arg-type]
    while True:
        if nxt == "}":
            return
        if nxt == "JOINT":
            child, cl = tok.name("a joint name", nline)
            _parse_joint(tok, joints, child, index, cl)
        elif nxt == "End":
            tok.expect("Site")
            tok.expect("{")
            tok.expect("OFFSET")
            eoff = tuple(tok.number(f"End Site OFFSET of {name!r}") for _ in range(3))
            tok.expect("}")
            joints.append(BvhJoint(name=name + END_SITE_SUFFIX, parent=index, offset=eoff, channels=(), is_end_site=True))  # type: ignore[arg-type]
        elif nxt == "MOTION":
            raise tok.error(f"joint {name!r} (line {line}) is not closed: missing '}}' before MOTION", nline)
        else:
            raise tok.error(f"expected JOINT, End Site or '}}' inside joint {name!r}, found {nxt!r}", nline)
        nxt, nline = tok.next(f"'}}' closing joint {name!r} (opened on line {line})")


def _header_value(lines: list[str], n: int, key: str, path: str) -> str:
    if n >= len(lines):
        raise MotionFileError(f"{path}:{n + 1}: unexpected end of file, expected '{key}'")
    line = lines[n].strip()
    if not line.lower().startswith(key.lower()):
        raise MotionFileError(f"{path}:{n + 1}: expected '{key}', found {line[:40]!r}")
    return line[len(key) :].strip()


def parse_bvh(text: str, path: str = "<string>") -> BvhMotion:
    """Parse the text of a BVH file (see ``read_bvh``)."""
    lines = text.splitlines()  # handles CRLF, LF and lone CR
    first = next((i for i, l in enumerate(lines) if l.strip()), None)
    if first is None or lines[first].strip().upper() != "HIERARCHY":
        raise MotionFileError(f"{path}:{(first or 0) + 1}: expected 'HIERARCHY' at the start of a BVH file")
    tok = _Tokens(lines[first + 1 :], path)
    tok.items = [(t, n + first + 1) for t, n in tok.items]
    tok.end_line += first + 1
    joints: list[BvhJoint] = []
    root_kw, rline = tok.next("ROOT")
    if root_kw != "ROOT":
        raise tok.error(f"expected 'ROOT', found {root_kw!r}", rline)
    root_name, rline = tok.name("the root's name", rline)
    _parse_joint(tok, joints, root_name, -1, rline)
    if tok.pos != len(tok.items):
        t, l = tok.items[tok.pos]
        raise tok.error(f"unexpected {t!r} after the root joint closed (only one ROOT is supported)", l)
    mline = tok.end_line - 1  # 0-based index of the MOTION line
    if mline >= len(lines):
        raise MotionFileError(f"{path}:{len(lines)}: no MOTION section")
    names = [j.name for j in joints]
    dup = {n for n in names if names.count(n) > 1}
    if dup:
        raise MotionFileError(f"{path}: joint names must be unique, repeated: {', '.join(sorted(dup))}")

    frames_txt = _header_value(lines, mline + 1, "Frames:", path)
    try:
        n_frames = int(frames_txt)
    except ValueError:
        raise MotionFileError(f"{path}:{mline + 2}: 'Frames:' must be an integer, found {frames_txt!r}") from None
    ft_txt = _header_value(lines, mline + 2, "Frame Time:", path)
    try:
        frame_time = float(ft_txt)
    except ValueError:
        raise MotionFileError(f"{path}:{mline + 3}: 'Frame Time:' must be a number, found {ft_txt!r}") from None
    if not (math.isfinite(frame_time) and frame_time > 0):
        raise MotionFileError(f"{path}:{mline + 3}: 'Frame Time:' must be positive, found {ft_txt!r}")
    if n_frames < 0:
        raise MotionFileError(f"{path}:{mline + 2}: 'Frames:' is negative ({n_frames})")

    n_ch = sum(len(j.channels) for j in joints)
    data_start = mline + 3
    rows = []
    for k in range(data_start, len(lines)):
        line = lines[k]
        if not line.strip():
            continue
        if len(rows) == n_frames:
            raise MotionFileError(
                f"{path}:{k + 1}: more motion lines than 'Frames: {n_frames}' says; fix the Frames: line (line {mline + 2})"
            )
        parts = line.split()
        if len(parts) != n_ch:
            raise MotionFileError(
                f"{path}:{k + 1}: frame {len(rows)} has {len(parts)} values, expected {n_ch} (one per channel)"
            )
        try:
            row = np.array(parts, dtype=np.float64)
        except ValueError:
            bad = next(p for p in parts if not _is_float(p))
            raise MotionFileError(f"{path}:{k + 1}: frame {len(rows)} has a non-number {bad!r}") from None
        if not np.all(np.isfinite(row)):
            col = int(np.argmin(np.isfinite(row)))
            raise MotionFileError(
                f"{path}:{k + 1}: frame {len(rows)} channel {col} ({_channel_name(joints, col)}) is {parts[col]}, "
                "expected a finite number"
            )
        rows.append(row)
    if len(rows) != n_frames:
        raise MotionFileError(
            f"{path}:{len(lines)}: 'Frames: {n_frames}' (line {mline + 2}) but the file has {len(rows)} motion lines; "
            "the file is truncated or the Frames: line is wrong"
        )
    values = np.stack(rows) if rows else np.zeros((0, n_ch))
    motion = BvhMotion(path=path, joints=tuple(joints), frame_time_s=frame_time, values=values)
    log.debug("read %s: %d joints, %d frames at %.1f fps", path, len(joints), n_frames, motion.fps)
    return motion


def _is_float(s: str) -> bool:
    try:
        float(s)
        return True
    except ValueError:
        return False


def _channel_name(joints: list[BvhJoint], col: int) -> str:
    k = 0
    for j in joints:
        if col < k + len(j.channels):
            return f"{j.name} {j.channels[col - k]}"
        k += len(j.channels)
    return "?"


def read_bvh(path: str | Path) -> BvhMotion:
    """Read a BVH file (``.bvh`` or ``.bvh.gz``) into a ``BvhMotion``.

    Raises ``MotionFileError`` naming the file and line for a malformed file.
    """
    path = Path(path)
    return parse_bvh(_open_text(path), str(path))
