"""A fleet's learner and trainer on one machine, a controller on "another": policies over DDS.

The learner and the trainer pool two robots' stores; the controller runs in a process of its
own whose working directory, run folder and environment share nothing with the trainer's, and
an audit hook in it reports every file it opens under the trainer's run folder (none may be).
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy")

from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from std_msgs.msg import Float64MultiArray, String  # noqa: E402
from test_nodes_common import ROOT, Probe, RosGraph, fresh_domain, node_args, wait_for  # noqa: E402

from sym_mbrl_ros.data.store import TransitionStore  # noqa: E402
from sym_mbrl_ros.envs import get_task  # noqa: E402
from sym_mbrl_ros.nodes.common import (  # noqa: E402
    MODEL_SCORE_TOPIC,
    MODEL_TEXT_TOPIC,
    POLICY_TOPIC,
    PROGRESS_TOPIC,
    QOS_LATCHED,
)
from sym_mbrl_ros.nodes.dynamics_learner import DynamicsLearner  # noqa: E402
from sym_mbrl_ros.nodes.policy_trainer import PolicyTrainer  # noqa: E402

pytestmark = [pytest.mark.ros, pytest.mark.slow]
TASK = get_task("pendulum")
OVERRIDES = json.dumps({"rollout_state_margin": 1.0, "rollout_batch_size": 64,
                        "updates_per_step": 2, "first_fit_updates": 0})
STORES = ["robot1/transitions.sqlite", "robot2/transitions.sqlite"]

HOOK = """
import sys
TRAINER = {trainer!r}
def _audit(event, args):
    if event == "open" and isinstance(args[0], (str, bytes)) and str(args[0]).startswith(TRAINER):
        print("OPENED-TRAINER-FILE", args[0], file=sys.stderr, flush=True)
sys.addaudithook(_audit)
from sym_mbrl_ros.nodes.controller import main
raise SystemExit(main(sys.argv))
"""


@pytest.fixture()
def graph():
    rclpy.init(domain_id=fresh_domain())
    g = RosGraph()
    yield g
    g.close()
    rclpy.shutdown()


def _fill(path, robot: str, n: int, seed: int) -> None:
    """What a robot's recorder stores: random torques on its own pendulum."""
    env, rng = TASK.make_env(), np.random.default_rng(seed)
    _, info = env.reset(seed=seed)
    state = info["state"]
    with TransitionStore(path, TASK.state_names, TASK.action_names, dt=TASK.dt,
                         task=TASK.name, robot=robot) as store:
        for _ in range(n):
            a = rng.uniform(-2, 2, 1)
            _, r, _, _, info = env.step(a)
            store.append(state, a, info["state"], reward=r)
            state = info["state"]
    env.close()


def _bad_messages(good: str) -> dict[str, str]:
    """One broken copy of a good policy message per reason the controller counts."""
    msg = json.loads(good)
    raw = base64.b64decode(msg["payload"]["data"])
    arrays = dict(np.load(io.BytesIO(raw)))
    arrays["w_mean"] = arrays["w_mean"][:5]  # the mean head no longer fits the trunk
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    shaped = buf.getvalue()

    def with_payload(**fields) -> str:
        return json.dumps({**msg, "payload": {**msg["payload"], **fields}})

    return {
        "hash": with_payload(sha256="0" * 64),
        "truncated": with_payload(data=base64.b64encode(raw[:-1000]).decode()),
        "shape": with_payload(data=base64.b64encode(shaped).decode(), size=len(shaped),
                              sha256=hashlib.sha256(shaped).hexdigest()),
        "format": with_payload(encoding="sym-mbrl/onnx-actor-v7"),
    }


def test_controller_elsewhere_loads_every_policy_over_dds_and_keeps_the_last_good(graph,
                                                                                   tmp_path):
    trainer_dir, robot_dir = tmp_path / "workstation", tmp_path / "robot"
    robot_dir.mkdir()
    for k, rel in enumerate(STORES):
        _fill(trainer_dir / rel, f"robot{k + 1}", 150, seed=k)
    probe = graph.add(Probe("probe_fleet"))
    policies = probe.listen(String, POLICY_TOPIC, QOS_LATCHED)
    scores = probe.listen(Float64MultiArray, MODEL_SCORE_TOPIC, QOS_LATCHED)
    texts = probe.listen(String, MODEL_TEXT_TOPIC, QOS_LATCHED)
    progress = probe.listen(Float64MultiArray, PROGRESS_TOPIC)
    probe.listen(DiagnosticArray, "/diagnostics", 100)
    bad_pub = probe.publisher(String, POLICY_TOPIC, QOS_LATCHED)

    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(robot_dir),
           "PYTHONPATH": str(ROOT / "src"), "ROS_DOMAIN_ID": os.environ["ROS_DOMAIN_ID"],
           "PYTHONUNBUFFERED": "1"}
    controller = subprocess.Popen(
        [sys.executable, "-c", HOOK.format(trainer=str(trainer_dir)), "--ros-args",
         "--params-file", str(ROOT / "config" / "pendulum.yaml"),
         "-p", f"run_dir:={robot_dir}", "-p", "diagnostics_period_s:=0.2"],
        cwd=robot_dir, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        graph.add(DynamicsLearner(**node_args("pendulum", trainer_dir, stores=STORES,
                                              min_transitions=200, refit_every=100000,
                                              poll_s=0.2)))
        trainer = graph.add(PolicyTrainer(**node_args(
            "pendulum", trainer_dir, stores=STORES, overrides=OVERRIDES, publish_every_s=0.3,
            store_poll_s=0.1, max_updates_per_transition=0.0)))
        assert wait_for(lambda: len(policies) >= 3, timeout=120), "the trainer published no policy"

        # learning progress as numbers and text: the model pooled both robots' 300 transitions
        (score, _, _) = scores[-1]
        assert score.layout.dim[0].label == "version,theta,theta_dot" and score.data[0] == 1.0
        assert min(score.data[1:]) > 0.9  # random-torque pendulum data: the model fits well
        assert texts[-1][0].data.startswith("model v1 (300 transitions)")
        assert "theta_ddot = " in texts[-1][0].data  # the law, as the model prints it
        def last_progress() -> dict[str, float]:
            if not progress:
                return {}
            msg = progress[-1][0]
            return dict(zip(msg.layout.dim[0].label.split(","), msg.data))

        # the rate is measured over a window: the first message after training starts may
        # still carry 0, so wait for one that carries a rate
        assert wait_for(lambda: last_progress().get("updates_per_s", 0) > 0, timeout=30)
        last = last_progress()
        assert last["transitions"] == 300 and last["model_version"] == 1 and last["updates"] > 0

        def controller_diag() -> dict[str, str]:
            return probe.diagnostics("controller")

        assert wait_for(lambda: int(controller_diag().get("policies", 0)) >= 2, timeout=60), \
            controller_diag()
        graph.remove(trainer)  # no more good policies: what the controller holds stays
        # the trainer's last version, not the probe's newest: one may still be in flight
        final = str(trainer.version)
        assert wait_for(lambda: controller_diag().get("policy_version") == final, timeout=10)
        held = controller_diag()["policy_version"]
        for reason, text in _bad_messages(policies[-1][0].data).items():
            bad_pub.publish(String(data=text))
            assert wait_for(lambda r=reason: controller_diag().get(f"bad_policy/{r}") == "1",
                            timeout=10), (reason, controller_diag())
        diag = controller_diag()
        assert diag["dropped/bad_policy"] == "4" and diag["policy_version"] == held
    finally:
        controller.send_signal(signal.SIGINT)
        try:
            out, _ = controller.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            controller.kill()
            out, _ = controller.communicate()
    assert "using policy weights" in out
    assert "OPENED-TRAINER-FILE" not in out, out
    assert list(trainer_dir.glob("policies/policy_*.pt"))  # the trainer's files exist...
    assert not list(robot_dir.rglob("*.pt"))  # ...and none reached the robot's side
