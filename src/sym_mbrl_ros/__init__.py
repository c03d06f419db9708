"""sym_mbrl_ros: model-based RL with a symbolic world model, as a ROS 2 package."""

__version__ = "0.1.0"
