"""sym-mbrl import-bag: a rosbag2 recording (MCAP or sqlite3) as a transitions file.

The bag is read with the ``rosbags`` library (no ROS install needed). Topic names, the state
layout (``state_fields``) and the recorder's pairing settings come from the task's parameter
file, and states are paired with commands by the recorder's own rule (``data/pairing.py``).

Times: a state's time is its header stamp (the bag's receive time where the stamp is zero); a
TwistStamped command's time is its header stamp; a Float64MultiArray has no header, so its
time is when the bag recorded it (the live recorder uses the DDS source timestamp instead: a
transport delay longer than one state period shifts a command onto the next state). Angle
coordinates (a continuous joint's position) are wrapped to [-pi, pi), as the task's observer
does.

A bag cut short (a recorder that was killed, a copy that stopped) is read as far as it goes:
an MCAP file without its summary is read up to the last complete record (and the complete
messages of an uncompressed chunk that was cut); a bag whose storage holds fewer messages than
its metadata.yaml lists is read and the difference reported.
"""

from __future__ import annotations

import bisect
import json
import math
import struct
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..data.fields import StateFields
from ..errors import UserError

HELP = "turn a rosbag2 recording (MCAP or sqlite3) into a transitions file"

EPISODE_TOPIC = "/sym_mbrl/episode"
TARGET_TOPIC = "/sym_mbrl/target"
JOINT_STATE = "sensor_msgs/msg/JointState"
ODOMETRY = "nav_msgs/msg/Odometry"
ARRAY = "std_msgs/msg/Float64MultiArray"
TWIST = "geometry_msgs/msg/TwistStamped"
POINT = "geometry_msgs/msg/PointStamped"
STRING = "std_msgs/msg/String"
ODOM_KEYS = ("x", "y", "yaw", "vx", "vy", "wz")
TWIST_KEYS = ("linear.x", "linear.y", "linear.z", "angular.x", "angular.y", "angular.z")
MCAP_MAGIC = b"\x89MCAP0\r\n"


def add_arguments(parser) -> None:
    parser.add_argument("bag", help="rosbag2 folder (metadata.yaml + .mcap or .db3), or one "
                                    ".mcap / .db3 file")
    parser.add_argument("--task", required=True, help="task whose robot the bag recorded")
    parser.add_argument("--out", required=True, help="transitions file to write (.npz)")
    parser.add_argument("--params", default=None,
                        help="parameter file with the topics and state_fields (default: the "
                             "task's config/TASK.yaml)")
    parser.add_argument("--pairing", choices=("auto", "next", "hold"), default=None,
                        help="pairing rule (default: the recorder's setting in the parameter "
                             "file; auto = next if the bag's episode events say lockstep, "
                             "else hold)")
    parser.add_argument("--namespace", default="",
                        help="namespace the robot's relative topic names were under")


# --------------------------------------------------------------------------- parameters
@dataclass(frozen=True)
class BagSettings(StateFields):
    """What the parameter file says about topics, the state layout (``fields``) and pairing."""

    state_topic: str
    joint_state_topic: str
    command_topic: str
    command_type: str
    command_fields: tuple[str, ...]
    pairing: str
    tolerance: float
    max_state_age_s: float


def _resolve(name: str, namespace: str) -> str:
    if name.startswith("/"):
        return name
    ns = namespace.strip("/")
    return f"/{ns}/{name}" if ns else f"/{name}"


def read_settings(task, params: str | Path | None, namespace: str = "") -> BagSettings:
    """Topics, ``state_fields`` and the recorder's pairing settings from a parameter file."""
    import yaml

    from ..bringup import graph, share_dir

    path = Path(params) if params else share_dir() / graph(task.name).config
    try:
        doc = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise UserError(f"parameter file {path} does not exist") from None
    except (OSError, yaml.YAMLError) as exc:
        raise UserError(f"cannot read parameter file {path} ({exc})") from None
    if not isinstance(doc, dict):
        raise UserError(f"parameter file {path} is not a ROS 2 parameter file (a mapping of "
                        f"node names to ros__parameters)")
    common = (doc.get("/**") or {}).get("ros__parameters") or {}
    recorder = (doc.get("/**/recorder") or doc.get("recorder") or {}).get(
        "ros__parameters") or {}
    p = {**common, **recorder}
    if p.get("task", task.name) != task.name:
        raise UserError(f"parameter file {path} is for task {p['task']!r}, not {task.name!r}; "
                        f"pass the matching --task or --params")
    fields = tuple(p.get("state_fields") or ())
    if not fields:
        joints = list(task.joint_names)
        fields = tuple([f"position.{j}" for j in joints] + [f"velocity.{j}" for j in joints])
    if len(fields) != task.state_dim:
        raise UserError(f"{path}: state_fields has {len(fields)} entries but {task.name}'s "
                        f"state has {task.state_dim} ({', '.join(task.state_names)})")
    for f in fields:
        source, _, key = f.partition(".")
        if not ((source in ("position", "velocity") and key)
                or (source == "odom" and key in ODOM_KEYS)
                or (source == "target" and key in ("x", "y", "z"))):
            raise UserError(f"{path}: state field {f!r} is not one of position.<joint>, "
                            f"velocity.<joint>, odom.<x|y|yaw|vx|vy|wz>, target.<x|y|z>")
    command_type = p.get("command_type", "array")
    command_fields = tuple(p.get("command_fields") or ())
    if command_type not in ("array", "twist"):
        raise UserError(f"{path}: command_type must be array or twist, not {command_type!r}")
    if command_type == "twist" and (len(command_fields) != task.action_dim
                                    or any(f not in TWIST_KEYS for f in command_fields)):
        raise UserError(f"{path}: command_fields must name {task.action_dim} of "
                        f"{', '.join(TWIST_KEYS)}")
    command_topic = p.get("command_topic") or (
        f"/{p.get('controller_name', 'effort_controller')}/commands")
    pairing = p.get("pairing", "auto")
    if pairing not in ("auto", "next", "hold"):
        raise UserError(f"{path}: pairing must be auto, next or hold, not {pairing!r}")
    return BagSettings(
        fields=fields,
        state_topic=_resolve(p.get("state_topic", "/joint_states"), namespace),
        joint_state_topic=_resolve(p.get("joint_state_topic", "/joint_states"), namespace),
        command_topic=_resolve(command_topic, namespace),
        command_type=command_type,
        command_fields=command_fields,
        pairing=pairing,
        tolerance=float(p.get("period_tolerance", 0.25)),
        max_state_age_s=float(p.get("max_state_age_s", 0.5)),
    )


# --------------------------------------------------------------------------- reading a bag
@dataclass
class BagContents:
    """Deserialised messages of the wanted topics, and what reading the bag found."""

    messages: dict[str, list[tuple[int, Any]]]
    types: dict[str, str]
    """Type of every topic in the bag."""
    read: dict[str, int]
    expected: dict[str, int]
    """Message counts metadata.yaml lists (empty without one)."""
    notes: list[str] = field(default_factory=list)
    undecodable: int = 0


def _storage_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    meta = path / "metadata.yaml"
    if meta.exists():
        import yaml

        try:
            info = yaml.safe_load(meta.read_text())["rosbag2_bagfile_information"]
            files = [path / Path(x).name for x in info["relative_file_paths"]]
            return [f for f in files if f.exists()]
        except (yaml.YAMLError, KeyError, TypeError):
            pass
    return sorted([*path.glob("*.mcap"), *path.glob("*.db3")])


def _expected_counts(path: Path) -> dict[str, int]:
    meta = path / "metadata.yaml" if path.is_dir() else None
    if meta is None or not meta.exists():
        return {}
    import yaml

    try:
        info = yaml.safe_load(meta.read_text())["rosbag2_bagfile_information"]
        return {t["topic_metadata"]["name"]: int(t["message_count"])
                for t in info["topics_with_message_count"]}
    except (yaml.YAMLError, KeyError, TypeError, ValueError):
        return {}


def salvage_mcap(src: Path, dst: Path) -> tuple[int, int]:
    """Copy the complete records of a cut MCAP file to ``dst`` and close it with a footer.

    Records are ``opcode (1) | length (u64) | body``; a chunk (0x06) that was cut keeps its
    complete inner records when it is uncompressed. The copy has no summary section, so a
    reader scans it from the start. Returns (bytes of ``src`` kept, bytes of ``src``).
    """
    data = src.read_bytes()
    if data[:8] != MCAP_MAGIC:
        raise UserError(f"{src} is not an MCAP file (its first bytes are not the MCAP magic)")
    out = bytearray(data[:8])
    pos, kept = 8, 8
    while pos + 9 <= len(data):
        op = data[pos]
        (length,) = struct.unpack_from("<Q", data, pos + 1)
        end = pos + 9 + length
        if op in (0x02, 0x0F):  # footer, data end: the data section is complete
            kept = pos
            break
        if end > len(data):
            if op == 0x06:
                kept = pos + _salvage_chunk(data[pos + 9:], out, pos + 9)
            break
        out += data[pos:end]
        pos = kept = end
    out += bytes([0x02]) + struct.pack("<QQQI", 20, 0, 0, 0) + MCAP_MAGIC
    dst.write_bytes(bytes(out))
    return kept, len(data)


def _salvage_chunk(body: bytes, out: bytearray, offset: int) -> int:
    """Append the complete records of a cut, uncompressed chunk body; returns bytes used."""
    try:
        (name_len,) = struct.unpack_from("<I", body, 28)
        compression = body[32:32 + name_len].decode()
        start = 32 + name_len + 8
    except (struct.error, UnicodeDecodeError):
        return 0
    if compression:
        return 0  # a cut compressed chunk cannot be decompressed
    pos = start
    while pos + 9 <= len(body):
        (length,) = struct.unpack_from("<Q", body, pos + 1)
        if pos + 9 + length > len(body):
            break
        out += body[pos:pos + 9 + length]
        pos += 9 + length
    return pos


def read_bag(path: str | Path, topics: dict[str, tuple[str, ...]]) -> BagContents:
    """The messages of ``topics`` (topic -> accepted types), as far as the bag can be read."""
    from rosbags.rosbag2 import Reader, ReaderError
    from rosbags.typesys import Stores, get_typestore

    path = Path(path)
    if not path.exists():
        raise UserError(f"bag {path} does not exist")
    files = _storage_files(path)
    if not files:
        raise UserError(f"{path} is not a rosbag2 recording: it has no metadata.yaml, .mcap "
                        f"or .db3 file")
    typestore = get_typestore(Stores.ROS2_JAZZY)
    contents = BagContents({t: [] for t in topics}, {}, dict.fromkeys(topics, 0),
                           _expected_counts(path))
    with tempfile.TemporaryDirectory(prefix="sym-mbrl-bag-") as tmp:
        readers = []
        try:
            reader = Reader(path)
            reader.open()
            readers.append(reader)
        except (ReaderError, OSError, ValueError, KeyError):
            for f in files:  # one storage file at a time; a cut MCAP gets salvaged
                readers.append(_open_file(f, Path(tmp), contents.notes, Reader, ReaderError))
            if not any(readers):
                raise UserError(f"cannot read the bag {path}: "
                                + "; ".join(contents.notes)) from None
        for reader in readers:
            if reader is None:
                continue
            try:
                _read_messages(reader, topics, typestore, contents)
            finally:
                reader.close()
    if contents.expected:
        want = {t: n for t, n in contents.expected.items() if t in topics}
        got = sum(contents.read.values())
        if sum(want.values()) > got:
            contents.notes.append(
                f"read {got} of the {sum(want.values())} messages metadata.yaml lists for the "
                f"needed topics: the bag is incomplete")
    return contents


def _open_file(f: Path, tmp: Path, notes: list[str], Reader, ReaderError):
    try:
        reader = Reader(f)
        reader.open()
        return reader
    except (ReaderError, OSError, ValueError, KeyError, IndexError) as exc:
        if f.suffix != ".mcap":
            notes.append(f"cannot read {f.name} ({exc})")
            return None
    fixed = tmp / f.name
    kept, size = salvage_mcap(f, fixed)
    notes.append(f"{f.name} is cut short (no summary): read its first {kept} of {size} bytes, "
                 f"up to the last complete record")
    try:
        reader = Reader(fixed)
        reader.open()
        return reader
    except (ReaderError, OSError, ValueError, KeyError, IndexError) as exc:
        notes.append(f"nothing of {f.name} could be read ({exc})")
        return None


def _read_messages(reader, topics, typestore, contents: BagContents) -> None:
    for conn in reader.connections:
        contents.types.setdefault(conn.topic, conn.msgtype)
    wanted = [c for c in reader.connections if c.topic in topics and c.msgtype in topics[c.topic]]
    if not wanted:
        return
    n = 0
    try:
        for conn, stamp, raw in reader.messages(connections=wanted):
            n += 1
            contents.read[conn.topic] += 1
            try:
                msg = typestore.deserialize_cdr(raw, conn.msgtype)
            except Exception:  # a damaged message: rosbags raises several types
                contents.undecodable += 1
                continue
            contents.messages[conn.topic].append((int(stamp), msg))
    except Exception as exc:  # the storage ends or breaks mid-way: keep what was read
        contents.notes.append(f"reading stopped after {n} messages ({type(exc).__name__}: "
                              f"{exc}); imported what came before")


# --------------------------------------------------------------------------- messages -> values
def _stamp(msg, fallback: int) -> int:
    ns = int(msg.header.stamp.sec) * 1_000_000_000 + int(msg.header.stamp.nanosec)
    return ns if ns > 0 else fallback


class _Drops(dict):
    def add(self, reason: str) -> None:
        self[reason] = self.get(reason, 0) + 1


def joint_values(msgs, fields, drops: _Drops) -> tuple[list[tuple[int, dict]], set[str]]:
    """``(stamp, {field: value})`` of the JointStates that hold every joint the fields need."""
    joint_fields = [f for f in fields if f.partition(".")[0] in ("position", "velocity")]
    out, seen = [], set()
    for log_ns, msg in msgs:
        names = list(msg.name)
        seen.update(names)
        pos, vel = np.asarray(msg.position), np.asarray(msg.velocity)
        if len(pos) != len(names) or len(vel) not in (0, len(names)):
            drops.add("wrong_length")
            continue
        index = {j: i for i, j in enumerate(names)}
        values = {}
        for f in joint_fields:
            source, _, joint = f.partition(".")
            arr = pos if source == "position" else vel
            if joint not in index or not len(arr):
                break
            values[f] = float(arr[index[joint]])
        else:
            if all(math.isfinite(v) for v in values.values()):
                out.append((_stamp(msg, log_ns), values))
            else:
                drops.add("nan")
            continue
        drops.add("missing_joint")
    return out, seen


def odom_values(msgs, fields, drops: _Drops) -> list[tuple[int, dict]]:
    out = []
    for log_ns, msg in msgs:
        p, q, t = msg.pose.pose.position, msg.pose.pose.orientation, msg.twist.twist
        yaw = math.atan2(2.0 * (q.w * q.z + q.x * q.y), 1.0 - 2.0 * (q.y * q.y + q.z * q.z))
        allv = {"odom.x": p.x, "odom.y": p.y, "odom.yaw": yaw, "odom.vx": t.linear.x,
                "odom.vy": t.linear.y, "odom.wz": t.angular.z}
        values = {f: float(allv[f]) for f in fields if f in allv}
        if all(math.isfinite(v) for v in values.values()):
            out.append((_stamp(msg, log_ns), values))
        else:
            drops.add("nan")
    return out


def command_values(msgs, settings: BagSettings, task, drops: _Drops) -> list[tuple[int, Any]]:
    out = []
    for log_ns, msg in msgs:
        if settings.command_type == "array":
            a, ns = np.asarray(msg.data, dtype=np.float64).reshape(-1), log_ns
        else:
            a = np.array([getattr(getattr(msg.twist, f.partition(".")[0]), f.partition(".")[2])
                          for f in settings.command_fields], dtype=np.float64)
            ns = _stamp(msg, log_ns)
        if a.shape != (task.action_dim,):
            drops.add("wrong_size")
        elif not np.all(np.isfinite(a)):
            drops.add("nan")
        else:
            out.append((ns, np.clip(a, task.action_low, task.action_high)))
    return out


class _History:
    """Values stamped in time; ``at(ns)`` is the newest stamped at or before ``ns``."""

    def __init__(self, items: list[tuple[int, dict]]):
        items = sorted(items, key=lambda x: x[0])
        self.stamps = [ns for ns, _ in items]
        self.values = [v for _, v in items]

    def at(self, ns: int) -> dict:
        k = bisect.bisect_right(self.stamps, ns)
        return self.values[k - 1] if k else {}


# --------------------------------------------------------------------------- the command
def run(args) -> int:
    from ..data.pairing import Unpairable, pair_recording
    from ..data.transitions import save_transitions
    from ..envs import get_task
    from ..envs.base import wrap_angle

    task = get_task(args.task)
    settings = read_settings(task, args.params, args.namespace)
    state_type = ODOMETRY if settings.uses_odom else JOINT_STATE
    topics = {settings.state_topic: (state_type,),
              settings.command_topic: (ARRAY if settings.command_type == "array" else TWIST,),
              EPISODE_TOPIC: (STRING,)}
    if settings.uses_odom and settings.joints:
        topics[settings.joint_state_topic] = (JOINT_STATE,)
    if settings.needs_target:
        topics[TARGET_TOPIC] = (POINT,)
    bag = read_bag(args.bag, topics)
    for note in bag.notes:
        print(f"note: {note}")
    for topic, types in topics.items():
        if topic == EPISODE_TOPIC:
            continue
        if topic not in bag.types:
            listed = ", ".join(sorted(bag.types)) or "none"
            raise UserError(f"{args.bag} has no {topic} topic ({types[0]}), which the parameter "
                            f"file names; its topics are: {listed} (set the topic in --params "
                            f"or use --namespace)")
        if bag.types[topic] not in types:
            raise UserError(f"{args.bag}: {topic} carries {bag.types[topic]}, not {types[0]}")
    if not bag.messages[settings.command_topic]:
        raise UserError(f"{args.bag} has no command messages on {settings.command_topic}; "
                        f"transitions need the commands the robot received")

    drops = _Drops()
    if settings.uses_odom:
        states = odom_values(bag.messages[settings.state_topic], settings.fields, drops)
        joint_msgs = bag.messages.get(settings.joint_state_topic, [])
        joints, seen = joint_values(joint_msgs, settings.fields, drops)
        if joint_msgs and not joints:
            raise _joint_error(args.bag, settings.joint_state_topic, seen, settings.joints)
    else:
        states, seen = joint_values(bag.messages[settings.state_topic], settings.fields, drops)
        joints = []
        if bag.messages[settings.state_topic] and not states:
            raise _joint_error(args.bag, settings.state_topic, seen, settings.joints)
    if not states:
        raise UserError(f"{args.bag} has no state messages on {settings.state_topic}")
    joints_at = _History(joints)
    targets = _History([(_stamp(m, ns), {f"target.{k}": float(getattr(m.point, k))
                                         for k in ("x", "y", "z")})
                        for ns, m in bag.messages.get(TARGET_TOPIC, [])])
    commands = command_values(bag.messages[settings.command_topic], settings, task, drops)
    boundaries, lockstep = [], False
    for _, msg in bag.messages[EPISODE_TOPIC]:
        try:
            event = json.loads(msg.data)
            boundaries.append(int(event["boundary_ns"]))
            lockstep = lockstep or event.get("mode") == "lockstep"
        except (ValueError, KeyError, TypeError):
            drops.add("bad_episode")
    mode = args.pairing or settings.pairing
    if mode == "auto":
        mode = "next" if lockstep else "hold"

    def assemble(before, after):
        target = targets.at(before.ns)
        try:
            s = [{**joints_at.at(before.ns), **before.payload, **target}[f]
                 for f in settings.fields]
            s2 = [{**joints_at.at(after.ns), **after.payload, **target}[f]
                  for f in settings.fields]
        except KeyError as exc:
            reason = "no_target" if str(exc.args[0]).startswith("target.") else "missing_field"
            raise Unpairable(reason, f"no value for state field {exc.args[0]}") from None
        s, s2 = np.array(s), np.array(s2)
        for i in task.angle_coords:  # a continuous joint's position, as the observer wraps it
            s[i], s2[i] = wrap_angle(s[i]), wrap_angle(s2[i])
        return s, s2

    rec = pair_recording(states, commands, mode=mode, dt=task.dt,
                         tolerance=settings.tolerance,
                         max_state_age_s=settings.max_state_age_s, boundaries=boundaries,
                         assemble=assemble, state_dim=task.state_dim,
                         action_dim=task.action_dim)
    for reason, n in rec.dropped.items():
        drops[reason] = drops.get(reason, 0) + n
    if not len(rec):
        why = ", ".join(f"{r} {n}" for r, n in sorted(drops.items())) or "nothing paired"
        raise UserError(f"no transitions in {args.bag}: {len(states)} states and "
                        f"{len(commands)} commands gave none ({why}); check the task and "
                        f"--pairing")
    path = save_transitions(
        args.out, rec.states, rec.actions, rec.next_states, state_names=task.state_names,
        action_names=task.action_names, dt=task.dt,
        episode=rec.episode if boundaries else rec.segment,
        angle_coords=task.angle_coords, static_coords=task.static_coords,
    )
    n_seg = int(rec.segment.max()) + 1
    episodes = f"{int(rec.episode.max()) + 1} episodes, " if boundaries else ""
    print(f"imported {len(rec)} transitions from {args.bag} ({mode} pairing, "
          f"{len(states)} states, {len(commands)} commands): {episodes}{n_seg} unbroken "
          f"segments")
    lost = {**drops, **{f"skipped/{r}": n for r, n in rec.skipped.items()}}
    if bag.undecodable:
        lost["undecodable"] = bag.undecodable
    if lost:
        print("dropped: " + ", ".join(f"{r} {n}" for r, n in sorted(lost.items())))
    else:
        print("dropped: nothing")
    print(f"written to {path}")
    return 0


def _joint_error(bag, topic: str, seen: set[str], needed: tuple[str, ...]) -> UserError:
    return UserError(f"the JointState messages on {topic} in {bag} name the joints "
                     f"{sorted(seen)}, but the state needs {list(needed)}; is this the "
                     f"right --task, or do the joint names in --params differ from the robot's?")
