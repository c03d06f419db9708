"""The MuJoCo tasks: gymnasium API, reward/observer contract, physics, learnability, rendering."""
# ruff: noqa: E402

import os

os.environ.setdefault("MUJOCO_GL", "osmesa")  # before mujoco is imported: headless rendering

import itertools
import math
import warnings

import gymnasium as gym
import mujoco
import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env

from sym_mbrl_ros.envs import (
    TASKS,
    TaskError,
    car2d,
    cartpole,
    get_task,
    make_env,
    pendulum,
    reacher,
    register_all,
    wrap_angle,
)
from sym_mbrl_ros.envs.assets import URDF_DIR_ENV, urdf_path

torch.set_num_threads(1)
NAMES = ["pendulum", "reacher", "car2d", "cartpole"]
ENV_CLASSES = {
    "pendulum": pendulum.PendulumEnv,
    "reacher": reacher.ReacherEnv,
    "car2d": car2d.Car2dEnv,
    "cartpole": cartpole.CartPoleEnv,
}
CAN_TERMINATE = {"cartpole"}  # the cart leaving the rail's soft limits ends the episode


def rollout(env, actions, seed):
    """Run ``actions`` from ``reset(seed)`` until the episode ends; returns obs, rewards,
    states (T+1, n), infos (each step's ``terminated`` is ``info["_terminated"]``)."""
    obs, info = env.reset(seed=seed)
    observations, rewards, states, infos = [obs], [], [info["state"]], [info]
    for a in actions:
        obs, r, terminated, truncated, info = env.step(a)
        observations.append(obs)
        rewards.append(r)
        states.append(info["state"])
        infos.append({**info, "_terminated": terminated})
        assert not terminated or env.unwrapped.task.name in CAN_TERMINATE
        if terminated or truncated:
            break
    return np.array(observations), np.array(rewards), np.array(states), infos


def random_actions(task, n, rng, overshoot=0.0):
    span = task.action_high - task.action_low
    return rng.uniform(task.action_low - overshoot * span, task.action_high + overshoot * span,
                       size=(n, task.action_dim))


# ---- registry and errors ---------------------------------------------------------------------
def test_tasks_and_registration():
    assert list(TASKS) == NAMES
    register_all()
    register_all()  # idempotent
    for name in NAMES:
        task = get_task(name)
        assert task.name == name
        assert len(task.state_names) == task.state_dim
        assert all(i < task.state_dim for i in task.angle_coords + task.static_coords)
        env = gym.make(task.env_id)
        assert env.spec.max_episode_steps == task.max_episode_steps
        assert isinstance(env.unwrapped, ENV_CLASSES[name])
        env.close()


def test_unknown_task_is_one_clear_sentence():
    with pytest.raises(TaskError) as err:
        get_task("x")
    assert str(err.value) == "unknown task 'x'; choose one of: pendulum, reacher, car2d, cartpole"
    with pytest.raises(TaskError, match="unknown task 'walker'"):
        make_env("walker")


@pytest.mark.parametrize("name", NAMES)
def test_bad_actions_raise_task_error(name):
    task = get_task(name)
    env = ENV_CLASSES[name]()
    env.reset(seed=0)
    with pytest.raises(TaskError, match=r"shape \(3,\).*expects shape"):
        env.step(np.zeros(3))
    with pytest.raises(TaskError, match="shape"):
        env.step(0.5)
    bad = np.zeros(task.action_dim)
    bad[-1] = np.nan
    with pytest.raises(TaskError, match="NaN"):
        env.step(bad)
    # a valid step still works afterwards, and an action outside the box is clipped to it
    env.step(task.action_high * 10)
    assert env.data.ctrl[-1] == env.model.actuator_ctrlrange[-1, 1]
    env.close()


def test_urdf_lookup(monkeypatch, tmp_path):
    for robot in NAMES:
        assert urdf_path(robot).is_file()
    (tmp_path / "pendulum.urdf").write_text(urdf_path("pendulum").read_text())
    monkeypatch.setenv(URDF_DIR_ENV, str(tmp_path))
    assert urdf_path("pendulum") == tmp_path / "pendulum.urdf"
    with pytest.raises(TaskError, match="cannot find walker.urdf"):
        urdf_path("walker")


# ---- gymnasium API ---------------------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_gymnasium_env_checker(name):
    register_all()
    env = gym.make(get_task(name).env_id, render_mode="rgb_array", width=96, height=72)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_env(env.unwrapped)
    # Advice only: the action boxes are physical (N m, rad) by design, and positions and
    # velocities are unbounded. Any other checker warning (determinism, data reuse, ...) fails.
    advisory = ("symmetric and normalized", "minimum value is -infinity",
                "maximum value is infinity")
    problems = [str(w.message) for w in caught if not any(a in str(w.message) for a in advisory)]
    assert problems == []
    env.close()


@pytest.mark.parametrize("name", NAMES)
def test_seeded_reset_repeats_exactly(name):
    task = get_task(name)
    env = ENV_CLASSES[name]()
    actions = random_actions(task, 30, np.random.default_rng(1))
    obs1, rew1, states1, _ = rollout(env, actions, seed=11)
    obs2, rew2, states2, _ = rollout(env, actions, seed=11)
    np.testing.assert_array_equal(obs1, obs2)
    np.testing.assert_array_equal(rew1, rew2)
    np.testing.assert_array_equal(states1, states2)
    obs3, _ = env.reset(seed=12)
    assert not np.array_equal(obs1[0], obs3)
    env.close()


@pytest.mark.parametrize("name", NAMES)
def test_truncation_and_success_info(name):
    task = get_task(name)
    env = ENV_CLASSES[name]()
    env.reset(seed=3)
    zero = np.zeros(task.action_dim)
    for t in range(task.max_episode_steps):
        _, _, terminated, truncated, info = env.step(zero)
        assert not terminated
        assert truncated == (t == task.max_episode_steps - 1)
        assert ("is_success" in info) == (truncated and task.success is not None)
    if task.success is not None:
        assert info["is_success"] == bool(task.success(info["state"][None])[0])
    env.close()


# ---- the task contract: reward, termination, observer ----------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_vectorised_reward_equals_env_reward(name):
    task = get_task(name)
    env = ENV_CLASSES[name]()
    rng = np.random.default_rng(5)
    raw = random_actions(task, task.max_episode_steps, rng, overshoot=0.25)
    _, rewards, states, infos = rollout(env, raw, seed=5)
    ended = np.array([info["_terminated"] for info in infos[1:]])
    s, s2 = states[:-1], states[1:]
    a = np.clip(raw[: len(s)], task.action_low, task.action_high)
    assert np.any(raw != np.clip(raw, task.action_low, task.action_high))  # clipping exercised
    np.testing.assert_allclose(task.reward(s, a, s2), rewards, rtol=1e-12, atol=1e-12)
    r_torch = task.reward(torch.as_tensor(s), torch.as_tensor(a), torch.as_tensor(s2))
    assert isinstance(r_torch, torch.Tensor) and r_torch.shape == (len(s),)
    np.testing.assert_allclose(r_torch.numpy(), rewards, rtol=1e-12, atol=1e-12)
    r32 = task.reward(*(torch.as_tensor(x, dtype=torch.float32) for x in (s, a, s2)))
    np.testing.assert_allclose(r32.numpy(), rewards, rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(task.terminated(s, a, s2), ended)
    done = task.terminated(torch.as_tensor(s), torch.as_tensor(a), torch.as_tensor(s2))
    assert done.dtype == torch.bool
    np.testing.assert_array_equal(done.numpy(), ended)
    if not task.terminates:  # the planner's scorer skips terminated() on the word of this flag
        far = rng.uniform(-100, 100, size=(256, task.state_dim))
        acts = rng.uniform(-10, 10, size=(256, task.action_dim))
        assert not np.any(ended) and not np.any(task.terminated(far, acts, far))
    env.close()


@pytest.mark.parametrize("name", NAMES)
def test_observer_round_trip(name):
    task = get_task(name)
    env = ENV_CLASSES[name]()
    obs, _, states, _ = rollout(env, random_actions(task, 40, np.random.default_rng(2)), seed=2)
    # the env's observation is observation(state) and the observer gives the state back
    np.testing.assert_allclose(task.observation(states), obs, rtol=0, atol=1e-12)
    np.testing.assert_allclose(task.observe(obs), states, rtol=0, atol=1e-12)
    for i in task.angle_coords:
        assert np.all((states[:, i] >= -np.pi) & (states[:, i] < np.pi))
    assert obs[0] in env.observation_space
    # observation_names (what policy formulas read) name the entries: those that are a state
    # coordinate or its cos/sin equal it
    names = task.observation_names
    assert len(names) == obs.shape[1] == len(set(names))
    checked = 0
    for j, n in enumerate(names):
        for prefix, f in (("", lambda x: x), ("cos_", np.cos), ("sin_", np.sin)):
            base = n[len(prefix):] if n.startswith(prefix) else None
            if base in task.state_names:
                i = task.state_names.index(base)
                np.testing.assert_allclose(obs[:, j], f(states[:, i]), atol=1e-12, err_msg=n)
                checked += 1
                break
    assert checked >= min(3, len(names) - 2)
    # round trip on random states from the whole domain, numpy and torch
    rng = np.random.default_rng(0)
    random_states = rng.uniform(-2.0, 2.0, size=(500, task.state_dim))
    for i in task.angle_coords:
        random_states[:, i] = rng.uniform(-np.pi, np.pi, 500)
    if name == "reacher":
        random_states[:, :2] = rng.uniform(task.action_low, task.action_high, (500, 2))
    back = task.observe(task.observation(random_states))
    np.testing.assert_allclose(back, random_states, rtol=0, atol=1e-12)
    back_t = task.observe(task.observation(torch.as_tensor(random_states)))
    np.testing.assert_allclose(back_t.numpy(), random_states, rtol=0, atol=1e-12)
    env.close()


@pytest.mark.parametrize("name", NAMES)
def test_joint_state_names_the_urdf_joints(name):
    env = ENV_CLASSES[name]()
    env.reset(seed=0)
    names, pos, vel = env.joint_state()
    assert names == get_task(name).joint_names
    assert pos.shape == vel.shape == (len(names),)
    for joint in names:
        assert f'name="{joint}"' in urdf_path(name).read_text()
    env.close()


# ---- physics ---------------------------------------------------------------------------------
def _pendulum_rk4(x, u, dt, n):
    def f(y):
        return np.array([y[1], 15.0 * math.sin(y[0]) + 3.0 * u])

    h = dt / n
    for _ in range(n):
        k1 = f(x)
        k2 = f(x + h / 2 * k1)
        k3 = f(x + h / 2 * k2)
        k4 = f(x + h * k3)
        x = x + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
    return x


def test_pendulum_follows_its_equation_of_motion():
    """theta'' = 15 sin(theta) + 3 u, integrated with a 50x finer RK4 over 20 steps (1 s).

    MuJoCo integrates with RK4 at h = 0.01 s, whose global error over 1 s is of order
    (sqrt(15) h)^4 ~ 1e-6 (measured: ~2e-7). A wrong parameter (g = 9.81, I = m l^2 / 12,
    a missing factor in the torque) changes the state by > 1e-2 over the same second, so a
    tolerance of 1e-5 separates integration error from a wrong model by three decades.
    """
    env = pendulum.PendulumEnv()
    rng = np.random.default_rng(0)
    for seed in range(4):
        _, info = env.reset(seed=seed)
        x = info["state"].copy()
        for _ in range(20):
            u = rng.uniform(-3.0, 3.0)  # beyond the box: the env must apply clip(u, -2, 2)
            _, _, _, _, info = env.step([u])
            x = _pendulum_rk4(x, float(np.clip(u, -2, 2)), pendulum.DT, 50)
            assert abs(wrap_angle(info["state"][0] - x[0])) < 1e-5
            assert abs(info["state"][1] - x[1]) < 1e-5
    env.close()


def test_reacher_fingertip_and_target_match_the_simulation():
    env = reacher.ReacherEnv()
    _, info = env.reset(seed=4)
    for a in random_actions(reacher.TASK, 20, np.random.default_rng(4)):
        _, _, _, _, info = env.step(a)
        fx, fy = reacher.fingertip(info["state"][None])
        mujoco.mj_kinematics(env.model, env.data)  # MuJoCo's own forward kinematics
        tip = env.data.site("fingertip").xpos
        np.testing.assert_allclose([fx[0], fy[0]], tip[:2], atol=1e-9)
        np.testing.assert_allclose(info["state"][4:], env.data.mocap_pos[0, :2])
        r = math.hypot(*info["state"][4:])
        assert reacher.TARGET_RADIUS[0] <= r <= reacher.TARGET_RADIUS[1]
    env.close()


def _reacher_ik(tx, ty):
    r2 = tx * tx + ty * ty
    c2 = (r2 - reacher.LINK1**2 - reacher.LINK2**2) / (2 * reacher.LINK1 * reacher.LINK2)
    for q2 in (math.acos(max(-1.0, min(1.0, c2))), -math.acos(max(-1.0, min(1.0, c2)))):
        q1 = math.atan2(ty, tx) - math.atan2(reacher.LINK2 * math.sin(q2),
                                              reacher.LINK1 + reacher.LINK2 * math.cos(q2))
        q1 = (q1 + math.pi) % (2 * math.pi) - math.pi
        if abs(q1) <= reacher.SHOULDER_LIMIT and abs(q2) <= reacher.ELBOW_LIMIT:
            return np.array([q1, q2])
    raise AssertionError(f"target ({tx}, {ty}) is out of reach")


def test_reacher_servos_settle_on_any_sampled_target_within_an_episode():
    env = reacher.ReacherEnv()
    for seed in range(10):
        _, info = env.reset(seed=seed)
        action = _reacher_ik(*info["state"][4:])
        for _ in range(reacher.MAX_EPISODE_STEPS):
            _, reward, _, truncated, info = env.step(action)
        assert truncated and info["is_success"], (seed, reward)
        assert -reward < 1e-3  # the PD arm has settled on the target
    env.close()


def _car_pursuit(obs):
    """Head for the target (reverse when it is behind), slowing down as it gets close."""
    dxb, dyb = obs[9], obs[10]
    alpha = math.atan2(dyb, dxb)
    speed = min(1.0, 1.2 * math.hypot(dxb, dyb))
    if abs(alpha) <= math.pi / 2:
        return np.array([speed * max(math.cos(alpha), 0.3), np.clip(3 * alpha, -1, 1)])
    behind = (alpha + 2 * math.pi) % (2 * math.pi) - math.pi
    return np.array([-speed * max(abs(math.cos(alpha)), 0.3), np.clip(-3 * behind, -1, 1)])


def test_car_task_is_solvable_within_an_episode():
    env = car2d.Car2dEnv()
    successes = 0
    for seed in range(20):
        obs, _ = env.reset(seed=seed)
        for _ in range(car2d.MAX_EPISODE_STEPS):
            obs, _, _, truncated, info = env.step(_car_pursuit(obs))
        assert truncated
        successes += info["is_success"]
    assert successes >= 18  # the naive controller circles a few targets right beside the car
    env.close()


def test_car_rolls_like_a_car():
    """Steady state: v = drive * 1 m/s, no side slip, yaw rate = v tan(steer) / wheelbase."""
    env = car2d.Car2dEnv()
    assert env.model.body("front_axle").pos[0] == pytest.approx(car2d.WHEELBASE)
    env.reset(seed=0)
    for _ in range(60):  # 3 s
        _, _, _, _, info = env.step([0.6, 0.5])
    x, y, yaw, v, steer, steer_rate = info["state"][:6]
    assert v == pytest.approx(0.6, abs=0.01)
    assert steer == pytest.approx(0.25, abs=0.005) and abs(steer_rate) < 1e-3
    yaw_rate = env.data.qvel[env.model.joint("chassis_yaw").dofadr[0]]
    assert yaw_rate == pytest.approx(v * math.tan(steer) / car2d.WHEELBASE, rel=0.03)
    vx, vy = env.data.qvel[:2]
    lateral = -math.sin(yaw) * vx + math.cos(yaw) * vy
    assert abs(lateral) < 0.01 * v
    env.close()


# ---- learnability: increments are low-complexity functions of (state, action) --------------
def _collect(name, n, seed):
    task = get_task(name)
    env = ENV_CLASSES[name]()
    rng = np.random.default_rng(seed)
    s, a, s2 = [], [], []
    _, info = env.reset(seed=seed)
    while len(s) < n:
        act = rng.uniform(task.action_low, task.action_high)
        _, _, terminated, truncated, nxt = env.step(act)
        s.append(info["state"])
        a.append(act)
        s2.append(nxt["state"])
        info = nxt
        if terminated or truncated:
            _, info = env.reset()
    env.close()
    return np.array(s), np.array(a), np.array(s2)


def _monomials(x, degree):
    cols = [np.ones(len(x))]
    for d in range(1, degree + 1):
        for combo in itertools.combinations_with_replacement(range(x.shape[1]), d):
            cols.append(np.prod(x[:, combo], axis=1))
    return np.stack(cols, axis=1)


def _library(s, a, name):
    """Polynomials (degree <= 3) of the state coordinates and actions, and the same times sin
    and cos of each angle: the kind of terms the symbolic regressor combines. Wrapped angles
    (pendulum theta, car yaw) enter only through sin/cos; car x, y not at all (the dynamics
    are translation invariant); the reacher's joint angles also enter as plain numbers."""
    if name == "reacher":
        angles, plain = s[:, :2], s[:, :4]
    elif name == "car2d":
        angles, plain = s[:, 2:3], s[:, 3:6]
    else:
        angles, plain = s[:, :1], s[:, 1:2]
    poly = _monomials(np.c_[plain, a], 3)
    trig = np.c_[np.sin(angles), np.cos(angles)]
    return np.concatenate([poly] + [t[:, None] * poly for t in trig.T], axis=1)


# the cart-pole's law is rational in cos(theta): test_cartpole.py checks it with its denominator
@pytest.mark.parametrize("name", [n for n in NAMES if n != "cartpole"])
def test_increments_are_learnable_from_5000_random_transitions(name):
    task = get_task(name)
    s, a, s2 = _collect(name, 6000, seed=0)
    d = s2 - s
    for i in task.angle_coords:
        d[:, i] = wrap_angle(d[:, i])
    dynamic = [i for i in range(task.state_dim) if i not in task.static_coords]
    np.testing.assert_array_equal(d[:, list(task.static_coords)], 0.0)
    lib = _library(s, a, name)
    scale = np.abs(lib[:5000]).max(axis=0)
    coef, *_ = np.linalg.lstsq(lib[:5000] / scale, d[:5000][:, dynamic], rcond=None)
    residual = d[5000:][:, dynamic] - (lib[5000:] / scale) @ coef
    r2 = 1.0 - residual.var(axis=0) / d[5000:][:, dynamic].var(axis=0)
    held_out = dict(zip([task.state_names[i] for i in dynamic], r2.round(6)))
    assert np.all(r2 >= 0.999), held_out


# ---- rendering -------------------------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_render_shows_the_scene_and_the_target(name):
    env = make_env(name, render_mode="rgb_array", width=320, height=240)
    env.reset(seed=0)
    env.step(np.zeros(get_task(name).action_dim))
    image = env.render()
    assert image.shape == (240, 320, 3) and image.dtype == np.uint8
    assert image.std() > 10  # not blank
    sim = env.unwrapped
    if name in ("reacher", "car2d"):  # the target marker is in view: hiding it changes it
        sim.data.mocap_pos[0] = [50.0, 50.0, 0.0]
        mujoco.mj_forward(sim.model, sim.data)
        assert np.count_nonzero(np.any(env.render() != image, axis=2)) > 10
    env.close()
    assert sim._renderer is None
    env.close()  # closing twice is fine
    assert ENV_CLASSES[name]().render() is None  # no render_mode, no image
