"""The pieces the nodes share (no DDS): message validation, the command codec, policy messages.

Also home of the helpers the DDS tests import (``RosGraph``, ``Probe``, ``node_args``).
"""

from __future__ import annotations

import json
import os
import random
import threading
import time
from pathlib import Path

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy")

from rclpy.executors import SingleThreadedExecutor  # noqa: E402
from rclpy.node import Node  # noqa: E402
from sensor_msgs.msg import JointState  # noqa: E402
from std_msgs.msg import Float64MultiArray  # noqa: E402

from sym_mbrl_ros.envs import get_task  # noqa: E402
from sym_mbrl_ros.nodes.common import QOS_STREAM  # noqa: E402
from sym_mbrl_ros.nodes.policies import (  # noqa: E402
    Exploration,
    PolicyError,
    file_sha256,
    formula_message,
    load_policy,
    weights_message,
)
from sym_mbrl_ros.nodes.topics import (  # noqa: E402
    BadMessage,
    CommandCodec,
    ConfigError,
    StampCheck,
    StateLayout,
)

ROOT = Path(__file__).resolve().parents[1]
PENDULUM = get_task("pendulum")


# ----------------------------------------------------------------------------- DDS helpers
def fresh_domain() -> int:
    """A ROS domain of our own (100-200), so parallel test runs never hear each other."""
    domain = random.SystemRandom().randint(100, 200)
    os.environ["ROS_DOMAIN_ID"] = str(domain)
    return domain


def node_args(task: str, run_dir: Path | str | None = None, **params) -> dict:
    """Node kwargs: the task's parameter file plus overrides (what `sym-mbrl up` passes)."""
    from rclpy.parameter import Parameter

    overrides = [Parameter(k, value=v) for k, v in params.items()]
    if run_dir is not None:
        overrides.append(Parameter("run_dir", value=str(run_dir)))
    return {"cli_args": ["--ros-args", "--params-file", str(ROOT / "config" / f"{task}.yaml")],
            "parameter_overrides": overrides}


class RosGraph:
    """Nodes spun by one executor in a background thread.

    Single-threaded, and spun under a lock that ``add``/``remove`` also take: a node is never
    destroyed while one of its callbacks runs (rclpy does not allow that).
    """

    def __init__(self):
        self.executor = SingleThreadedExecutor()
        self.nodes: list[Node] = []
        self.errors: list[BaseException] = []  # raised by node callbacks; a test should fail
        self._lock = threading.Lock()
        self._stop = False
        self._thread = threading.Thread(target=self._spin, daemon=True)
        self._thread.start()

    def _spin(self) -> None:
        while not self._stop and rclpy.ok():
            with self._lock:
                try:
                    self.executor.spin_once(timeout_sec=0.005)
                except Exception as exc:  # keep spinning; the fixture reports it
                    self.errors.append(exc)
            time.sleep(0.0005)  # let add/remove take the lock

    def add(self, node: Node) -> Node:
        with self._lock:
            self.executor.add_node(node)
            self.nodes.append(node)
        return node

    def remove(self, node: Node) -> None:
        with self._lock:
            self.executor.remove_node(node)
            self.nodes.remove(node)
            close = getattr(node, "close", None)
            if close is not None:
                close()
            node.destroy_node()

    def close(self) -> None:
        """Stop; raises if a node callback raised meanwhile (a node must never do that)."""
        for node in list(self.nodes):
            self.remove(node)
        self._stop = True
        self._thread.join(timeout=5)
        self.executor.shutdown()
        assert not self.errors, f"node callbacks raised: {self.errors!r}"


def wait_for(condition, timeout: float = 10.0, period: float = 0.01) -> bool:
    """Poll ``condition()`` until it is true or ``timeout`` seconds passed."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if condition():
            return True
        time.sleep(period)
    return bool(condition())


class Probe(Node):
    """The test's own node: records what arrives on topics and publishes test input."""

    def __init__(self, name: str = "probe"):
        super().__init__(name)
        self.got: dict[str, list] = {}
        self._pubs: dict[str, object] = {}

    def listen(self, msg_type, topic: str, qos=QOS_STREAM) -> list:
        box = self.got.setdefault(topic, [])
        self.create_subscription(msg_type, topic,
                                 lambda m, info: box.append((m, info, time.time_ns())), qos)
        return box

    def publisher(self, msg_type, topic: str, qos=QOS_STREAM):
        if topic not in self._pubs:
            self._pubs[topic] = self.create_publisher(msg_type, topic, qos)
        return self._pubs[topic]

    def wait_matched(self, topic: str, timeout: float = 10.0) -> bool:
        pub = self._pubs[topic]
        return wait_for(lambda: pub.get_subscription_count() > 0, timeout)

    def diagnostics(self, node_name: str) -> dict[str, str]:
        """The newest key/values a node put on /diagnostics."""
        status = self.status(node_name)
        return {} if status is None else {kv.key: kv.value for kv in status.values}

    def status(self, node_name: str):
        """The newest DiagnosticStatus a node put on /diagnostics (None: none yet)."""
        for m, _, _ in reversed(self.got.get("/diagnostics", [])):
            for status in m.status:
                if status.name == f"sym_mbrl/{node_name}":
                    return status
        return None

    def level(self, node_name: str) -> int | None:
        """The newest /diagnostics level of a node as an int (0 OK, 1 WARN, 2 ERROR)."""
        status = self.status(node_name)
        return None if status is None else ord(status.level)


def joint_state(names, positions, velocities=None, ns: int | None = None) -> JointState:
    msg = JointState()
    ns = time.time_ns() if ns is None else ns
    msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(ns, 1_000_000_000)
    msg.name = list(names)
    msg.position = [float(p) for p in positions]
    msg.velocity = [float(v) for v in (velocities if velocities is not None else positions)]
    return msg


def command(values) -> Float64MultiArray:
    return Float64MultiArray(data=[float(v) for v in values])


def constant_formula(task, values) -> str:
    """A formula policy message that always commands ``values``."""
    obs_dim = int(np.asarray(task.observation(np.zeros((1, task.state_dim)))).shape[-1])
    return formula_message(task, {
        "format": "sym-mbrl/policy-v1", "observation_names": [f"o{i}" for i in range(obs_dim)],
        "action_names": list(task.action_names), "expressions": [repr(float(v)) for v in values],
        "action_low": task.action_low.tolist(), "action_high": task.action_high.tolist(),
    }, version=1)


# ----------------------------------------------------------------------------- pure tests
def test_state_layout_validates_joint_states():
    layout = StateLayout.parse(["position.hinge", "velocity.hinge"], 2)
    assert layout.joint_values(joint_state(["hinge"], [0.5], [1.5])) == {
        "position.hinge": 0.5, "velocity.hinge": 1.5}
    # joints the state does not read are ignored (a robot publishes all of its joints)
    assert layout.joint_values(joint_state(["wheel", "hinge"], [9.0, 0.5], [8.0, 1.5])) == {
        "position.hinge": 0.5, "velocity.hinge": 1.5}
    cases = {
        "wrong_length": joint_state(["hinge"], [0.1, 0.2], [0.0, 0.0]),
        "duplicate_joint": joint_state(["hinge", "hinge"], [0.1, 0.2]),
        "missing_joint": joint_state(["elbow"], [0.1]),
        "nan": joint_state(["hinge"], [float("nan")], [0.0]),
    }
    for reason, msg in cases.items():
        with pytest.raises(BadMessage) as err:
            layout.joint_values(msg)
        assert err.value.reason == reason
    with pytest.raises(ConfigError, match="one field per coordinate"):
        StateLayout.parse(["position.hinge"], 2)
    with pytest.raises(ConfigError, match="is not one of"):
        StateLayout.parse(["speed.hinge", "velocity.hinge"], 2)
    with pytest.raises(BadMessage, match="no value yet") as err:
        StateLayout.parse(["position.a", "target.x"]).assemble({"position.a": 1.0})
    assert err.value.reason == "no_target"


def test_state_layout_round_trips_the_bridge_messages():
    reacher = StateLayout.parse(["position.shoulder", "position.elbow", "velocity.shoulder",
                                 "velocity.elbow", "target.x", "target.y"], 6)
    state = np.array([0.1, -0.2, 0.3, -0.4, 0.05, 0.12])
    js = reacher.joint_state(state, ["shoulder", "elbow"], 123)
    target = reacher.target(state, 123)
    values = {**reacher.joint_values(js),
              **reacher.target_values(target)}
    np.testing.assert_allclose(reacher.assemble(values), state)
    car = StateLayout.parse(["odom.x", "odom.y", "odom.yaw", "odom.vx", "position.steer",
                             "velocity.steer", "target.x", "target.y"], 8)
    state = np.array([0.3, -1.2, 2.9, 0.7, 0.2, -0.1, 1.0, 1.5])
    values = {**car.odom_values(car.odometry(state, 5)),
              **car.joint_values(car.joint_state(state, ["steer", "wheel"], 5)),
              **car.target_values(car.target(state, 5))}
    np.testing.assert_allclose(car.assemble(values), state, atol=1e-12)


def test_command_codec_and_stamp_check():
    codec = CommandCodec.parse("array", 2)
    a, ns = codec.from_msg(codec.to_msg(np.array([0.5, -1.0]), 0), 42)
    assert a.tolist() == [0.5, -1.0] and ns == 42
    with pytest.raises(BadMessage) as err:
        codec.from_msg(command([1.0, 2.0, 3.0]), 1)
    assert err.value.reason == "wrong_size"
    with pytest.raises(BadMessage) as err:
        codec.from_msg(command([1.0, float("inf")]), 1)
    assert err.value.reason == "nan"
    twist = CommandCodec.parse("twist", 2, ["linear.x", "angular.z"])
    msg = twist.to_msg(np.array([0.4, -0.3]), 7_000_000_000)
    assert (msg.twist.linear.x, msg.twist.angular.z) == (0.4, -0.3)
    assert twist.from_msg(msg, 1)[1] == 7_000_000_000  # header stamp beats DDS time
    with pytest.raises(ConfigError):
        CommandCodec.parse("twist", 2, ["linear.x"])
    check = StampCheck(max_age_s=1.0)
    now = time.time_ns()
    check.check(now, now)
    for ns, reason in ((now, "out_of_order"), (now - 5_000_000_000, "out_of_order"),
                       (now + 5_000_000_000, "stale")):
        with pytest.raises(BadMessage) as err:
            check.check(ns, now)
        assert err.value.reason == reason


def test_exploration_amplitude_bounds_the_exploratory_actions():
    reacher = get_task("reacher")
    for kind in ("uniform", "gaussian"):
        explore = Exploration(reacher, kind, scale=2.0, seed=3, amplitude=0.25)
        xs = np.array([explore(np.zeros(6)) for _ in range(500)])
        limit = 0.25 * reacher.action_high  # the box is symmetric about 0
        assert np.all(np.abs(xs) <= limit)
        # the bound is used, not just respected: actions reach within 10% of it
        assert np.all(np.abs(xs).max(axis=0) > 0.9 * limit)
    with pytest.raises(PolicyError, match="between 0 and 1"):
        Exploration(reacher, "uniform", amplitude=1.5)


def test_formula_policies_keep_non_finite_actions():
    """NaN and inf stay non-finite (the controller's guard decides), finite ones are clipped."""
    nan, _ = load_policy(constant_formula(PENDULUM, [1.0]).replace('"1.0"', '"sqrt(-1 - o2*o2)"'),
                         PENDULUM)
    inf, _ = load_policy(constant_formula(PENDULUM, [1.0]).replace('"1.0"', '"exp(1000 + o2)"'),
                         PENDULUM)
    assert np.isnan(nan(np.array([0.3, 0.1]))).all()
    assert np.isposinf(inf(np.array([0.3, 0.1]))).all()


def test_exploration_is_seeded_and_within_limits():
    a = Exploration(PENDULUM, "uniform", hold_steps=3, seed=1)
    b = Exploration(PENDULUM, "uniform", hold_steps=3, seed=1)
    xa = np.array([a(np.zeros(2)) for _ in range(30)])
    xb = np.array([b(np.zeros(2)) for _ in range(30)])
    np.testing.assert_array_equal(xa, xb)
    assert np.all(np.abs(xa) <= 2.0) and len(np.unique(xa)) == 10  # held 3 ticks each
    assert np.all(Exploration(PENDULUM, "zero")(np.zeros(2)) == 0.0)
    with pytest.raises(PolicyError):
        Exploration(PENDULUM, "brownian")


def _tamper(text: str, **payload) -> str:
    """A weights message with payload fields replaced."""
    msg = json.loads(text)
    msg["payload"] = {**msg["payload"], **payload}
    return json.dumps(msg)


def test_policy_messages(tmp_path):
    policy, msg = load_policy(constant_formula(PENDULUM, [5.0]), PENDULUM)
    assert msg["kind"] == "formula" and policy(np.array([0.3, 0.1])).tolist() == [2.0]  # clipped
    from sym_mbrl_ros.agents.sac import SAC, SACConfig

    agent = SAC(3, PENDULUM.action_low, PENDULUM.action_high,
                SACConfig(hidden_sizes=(128, 128)), seed=0)
    text = weights_message(PENDULUM, agent, version=1)
    # the actor's deterministic path only: 17,153 float32 (68.6 kB) plus the archive, base64
    assert 90_000 < len(text) < 100_000
    act, msg = load_policy(text, PENDULUM)
    assert msg["payload"]["encoding"] == "sym-mbrl/mlp-actor-v1" and "path" not in msg
    state = np.array([0.3, -0.2])
    expected = agent.predict(PENDULUM.observation(state[None])[0], deterministic=True)
    np.testing.assert_allclose(act(state), expected, rtol=1e-5)  # numpy float64 vs torch float32
    path = tmp_path / "policy_0001.pt"  # a saved agent file gives the same message weights
    agent.save(path)
    assert json.loads(weights_message(PENDULUM, path, 1))["payload"]["sha256"] == \
        msg["payload"]["sha256"]
    data = msg["payload"]["data"]
    import base64
    import hashlib
    import io

    raw = bytearray(base64.b64decode(data))
    raw[len(raw) // 2] ^= 0xFF
    arrays = dict(np.load(io.BytesIO(base64.b64decode(data))))
    arrays["w1"] = arrays["w1"][:, :7]  # a layer that does not chain
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    misshapen = buf.getvalue()
    bad = [
        (("not JSON", "truncated"), "{"),
        (("not JSON", "truncated"), text[: len(text) // 2]),
        (("lacks", "format"), json.dumps({"kind": "formula"})),
        (("kind must be", "format"), json.dumps({"format": "sym-mbrl/policy-v1", "kind": "magic"})),
        (("names a file", "format"), json.dumps({"format": "sym-mbrl/policy-v1", "kind": "weights",
                                                "path": str(path), "sha256": "0" * 64})),
        (("unknown payload encoding", "format"), _tamper(text, encoding="pickle-v9")),
        (("do not match their sha256", "hash"), _tamper(text, sha256="0" * 64)),
        (("do not match their sha256", "hash"), _tamper(
            text, data=base64.b64encode(bytes(raw)).decode())),
        (("holds .* bytes", "truncated"), _tamper(text, data=base64.b64encode(
            base64.b64decode(data)[:-400]).decode())),
        (("not complete base64", "truncated"), _tamper(text, data=data[:-3])),
        (("do not chain", "shape"), _tamper(text, size=len(misshapen), data=base64.b64encode(
            misshapen).decode(), sha256=hashlib.sha256(misshapen).hexdigest())),
        (("not a readable array archive", "truncated"), _tamper(
            text, size=100, data=base64.b64encode(b"x" * 100).decode(),
            sha256=hashlib.sha256(b"x" * 100).hexdigest())),
        (("is for task", "task"), json.dumps({**json.loads(text), "task": "reacher"})),
        (("invalid|not allowed|unknown|undeclared", "format"), constant_formula(
            PENDULUM, [1.0]).replace('"1.0"', '"__import__(os)"')),
    ]
    for (match, reason), text_ in bad:
        with pytest.raises(PolicyError, match=match) as err:
            load_policy(text_, PENDULUM)
        assert err.value.reason == reason, match
    reacher_agent = SAC(11, [-1, -1], [1, 1], SACConfig(hidden_sizes=(16,)), seed=0)
    with pytest.raises(PolicyError, match="maps 11 observations to 2 actions") as err:
        load_policy(weights_message(PENDULUM, reacher_agent, 1), PENDULUM)
    assert err.value.reason == "shape"
    assert file_sha256(path) != msg["payload"]["sha256"]  # the file is not what travels


def test_mlp_policy_payload_acts_without_torch(tmp_path):
    """The controller's numpy path: a payload decodes and acts in a process where torch cannot
    be imported."""
    import subprocess
    import sys

    from sym_mbrl_ros.agents.sac import SAC, SACConfig

    agent = SAC(3, PENDULUM.action_low, PENDULUM.action_high,
                SACConfig(hidden_sizes=(32, 32)), seed=4)
    msg = json.loads(weights_message(PENDULUM, agent, version=1))
    (tmp_path / "payload.json").write_text(json.dumps(msg["payload"]))
    obs = np.array([0.6, 0.8, -1.5])
    expected = agent.predict(obs, deterministic=True)
    code = (
        "import sys, json; sys.modules['torch'] = None\n"
        "from sym_mbrl_ros.nodes.policy_payload import decode\n"
        f"actor = decode(json.load(open({str(tmp_path / 'payload.json')!r})))\n"
        "print(json.dumps(actor.predict([0.6, 0.8, -1.5]).tolist()))\n"
        "assert 'torch' not in sys.modules or sys.modules['torch'] is None\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(ROOT / "src")}, timeout=60)
    assert out.returncode == 0, out.stderr
    np.testing.assert_allclose(json.loads(out.stdout), expected, rtol=1e-5)  # f64 vs torch f32


def test_policy_messages_over_the_task_policy_inputs(tmp_path):
    """Car2d: a formula over the policy inputs and a weights file whose networks read only them
    act on the controller's state like the learner's own predict."""
    from sym_mbrl_ros.agents.presets import make_config, make_learner

    car = get_task("car2d")
    names = [car.observation_names[i] for i in car.policy_inputs]
    formula = {
        "format": "sym-mbrl/policy-v1", "observation_names": names,
        "action_names": list(car.action_names),
        "expressions": ["tanh(2*target_dx_body)", "tanh(3*target_dy_body)"],
        "action_low": car.action_low.tolist(), "action_high": car.action_high.tolist(),
        "input_indices": list(car.policy_inputs), "observation_size": 11,
    }
    act, _ = load_policy(formula_message(car, formula, version=1), car)
    # the car at (1, 1) facing +y, the target 0.5 m ahead of it: drive forward, no steering
    state = np.array([1.0, 1.0, np.pi / 2, 0.0, 0.0, 0.0, 1.0, 1.5])
    np.testing.assert_allclose(act(state), [np.tanh(1.0), 0.0], atol=1e-12)
    with pytest.raises(PolicyError, match="maps 5 observations"):
        load_policy(formula_message(car, {**formula, "input_indices": None}, version=1), car)

    learner = make_learner("sac", car, make_config("sac", "car2d"), seed=0, obs_dim=11)
    path = tmp_path / "policy_0001.pt"
    learner.save(path)
    act, _ = load_policy(weights_message(car, learner, version=1), car)
    expected = learner.predict(car.observation(state[None])[0], deterministic=True)
    np.testing.assert_allclose(act(state), expected, rtol=1e-5, atol=1e-6)
