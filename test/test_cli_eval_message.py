"""`sym-mbrl eval --policy-message`: a policy message, from a file or a bag, replays anywhere."""

from __future__ import annotations

import json

import numpy as np
import pytest

from sym_mbrl_ros.agents.sac import SAC, SACConfig
from sym_mbrl_ros.cli import main
from sym_mbrl_ros.commands.eval import message_controller
from sym_mbrl_ros.envs import get_task
from sym_mbrl_ros.errors import UserError
from sym_mbrl_ros.nodes.policies import weights_message

TASK = get_task("pendulum")


def _agent(seed: int) -> SAC:
    return SAC(3, TASK.action_low, TASK.action_high, SACConfig(hidden_sizes=(32, 32)), seed=seed)


def _write_bag(path, texts, topic="/robot2/sym_mbrl/policy"):
    pytest.importorskip("rosbags")
    from rosbags.rosbag2 import StoragePlugin, Writer
    from rosbags.typesys import Stores, get_typestore

    ts = get_typestore(Stores.ROS2_JAZZY)
    with Writer(path, version=9, storage_plugin=StoragePlugin.MCAP) as w:
        conn = w.add_connection(topic, "std_msgs/msg/String", typestore=ts)
        w.add_connection("/robot2/joint_states", "sensor_msgs/msg/JointState", typestore=ts)
        for i, text in enumerate(texts):
            msg = ts.types["std_msgs/msg/String"](data=text)
            w.write(conn, 1_000_000_000 * (i + 1), ts.serialize_cdr(msg, msg.__msgtype__))
    return path


def test_eval_replays_a_policy_message_file(tmp_path, capsys):
    agent = _agent(0)
    path = tmp_path / "elsewhere" / "policy.json"
    path.parent.mkdir()
    path.write_text(weights_message(TASK, agent, version=7))
    task, [(name, actor)] = message_controller(path)
    assert task.name == "pendulum" and "v7" in name
    obs = np.array([[0.6, 0.8, -1.5], [1.0, 0.0, 0.0]])
    np.testing.assert_allclose(actor.predict(obs), agent.predict(obs, deterministic=True),
                               rtol=1e-5)  # numpy float64 against torch float32
    assert main(["eval", "--policy-message", str(path), "--episodes", "1"]) == 0
    out = capsys.readouterr().out
    assert "pendulum (weights policy v7 from" in out and "mean return" in out


def test_eval_takes_the_newest_or_a_given_version_from_a_bag(tmp_path):
    agents = [_agent(s) for s in (1, 2, 3)]
    bag = _write_bag(tmp_path / "bag", [weights_message(TASK, a, version=v)
                                        for v, a in enumerate(agents, start=1)])
    obs = np.array([0.2, -0.9, 0.4])
    _, [(name, newest)] = message_controller(bag)
    assert "v3" in name and "/robot2/sym_mbrl/policy" in name
    np.testing.assert_allclose(newest.predict(obs), agents[2].predict(obs), rtol=1e-5)
    _, [(_, second)] = message_controller(bag, version=2)
    np.testing.assert_allclose(second.predict(obs), agents[1].predict(obs), rtol=1e-5)
    with pytest.raises(UserError, match="no policy version 9"):
        message_controller(bag, version=9)
    with pytest.raises(UserError, match="no std_msgs/String message on /nope"):
        message_controller(bag, topic="/nope")


def test_eval_rejects_a_damaged_message_in_one_sentence(tmp_path):
    text = json.loads(weights_message(TASK, _agent(0), version=1))
    text["payload"]["sha256"] = "f" * 64
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(text))
    with pytest.raises(UserError, match="do not match their sha256"):
        message_controller(path)
    from sym_mbrl_ros.cli import build_parser
    from sym_mbrl_ros.commands import eval as eval_cmd

    with pytest.raises(UserError, match="either a run folder or --policy-message"):
        eval_cmd.run(build_parser().parse_args(["eval", str(tmp_path), "--policy-message",
                                                str(path)]))
