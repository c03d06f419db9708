"""The ROS 2 nodes (the only package that imports rclpy): sim_bridge, recorder,
dynamics_learner, policy_trainer, controller. See docs/ros.md and bringup.py."""
