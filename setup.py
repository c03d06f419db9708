"""ament_python package sym_mbrl_ros.

Dependencies are given as ranges here, so that `pip install .` into a ROS 2 install keeps the
distro's numpy, scipy, ...; the exact versions the project is tested with are pinned in
constraints.txt, which scripts/setup.sh installs with (`pip install -c constraints.txt`).
"""

from glob import glob

from setuptools import find_packages, setup

PACKAGE = "sym_mbrl_ros"

# Core library (envs, dynamics, agents, data). Lower bounds: Ubuntu 24.04's (ROS 2 Jazzy)
# versions where it has the package.
INSTALL_REQUIRES = [
    "numpy>=1.26,<3",
    "scipy>=1.11,<2",
    "sympy>=1.12,<2",
    "torch>=2.1,<3",
    "mujoco>=3.2,<5",
    "gymnasium>=1.0,<2",
    "pyoperon>=0.6,<0.7",
    "PyOpenGL>=3.1.7,<4",
    "PyYAML>=6.0,<7",
    "matplotlib>=3.6,<4",
    "pillow>=10.0",
    "tqdm>=4.64,<5",
    "rosbags>=0.10,<0.12",
]

EXTRAS_REQUIRE = {
    # ROS 2 Jazzy from PyPI wheels, for machines without a ROS 2 distro.
    "ros": [
        "ros-jazzy-rclpy[fastrtps]>=7.1,<8",
        "ros-jazzy-std-msgs>=5.3,<6",
        "ros-jazzy-sensor-msgs>=5.3,<6",
        "ros-jazzy-geometry-msgs>=5.3,<6",
        "ros-jazzy-nav-msgs>=5.3,<6",
        "ros-jazzy-visualization-msgs>=5.3,<6",
        "ros-jazzy-std-srvs>=5.3,<6",
        "ros-jazzy-rosgraph-msgs>=2.0,<3",
        "ros-jazzy-diagnostic-msgs>=5.3,<6",
        "ros-jazzy-lifecycle-msgs>=2.0,<3",
        "ros-jazzy-ament-package>=0.16,<0.17",
        "colcon-common-extensions>=0.3,<0.4",
    ],
    "test": [
        "pytest>=8",
        "ruff>=0.5",
    ],
    "bench": [
        "pysindy>=2.0,<3",
        "stable-baselines3>=2.3,<3",
        "rliable>=1.2,<2",
    ],
}

NODES = [
    # name = module:function; the executables bringup.py and the launch files start.
    "sim_bridge = sym_mbrl_ros.nodes.sim_bridge:main",
    "recorder = sym_mbrl_ros.nodes.recorder:main",
    "dynamics_learner = sym_mbrl_ros.nodes.dynamics_learner:main",
    "policy_trainer = sym_mbrl_ros.nodes.policy_trainer:main",
    "controller = sym_mbrl_ros.nodes.controller:main",
    "fake_hardware = sym_mbrl_ros.nodes.fake_hardware:main",
]

setup(
    name=PACKAGE,
    version="0.1.0",
    package_dir={"": "src"},
    packages=find_packages("src"),
    package_data={
        PACKAGE: [
            "py.typed",
            "dynamics/weights/*.pt",
            "dynamics/weights/*.json",
            "dynamics/weights/*.md",
        ]
    },
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{PACKAGE}"]),
        (f"share/{PACKAGE}", ["package.xml"]),
        (f"share/{PACKAGE}/launch", glob("launch/*.launch.py")),
        (f"share/{PACKAGE}/config", glob("config/*.yaml") + glob("config/*.rviz")),
        (f"share/{PACKAGE}/urdf", glob("urdf/*.urdf")),
    ],
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS_REQUIRE,
    python_requires=">=3.10",
    zip_safe=True,
    maintainer="sym_mbrl_ros developers",
    maintainer_email="dev@sym-mbrl.invalid",
    description="Model-based RL with symbolic world models, as a ROS 2 package.",
    license="Apache-2.0",
    entry_points={
        "console_scripts": ["sym-mbrl = sym_mbrl_ros.cli:main"] + NODES,
    },
)
