"""ros2_gmskip: GM-Skip block skipping and token pruning for driving-scene VLMs + a ROS 2 node."""

__version__ = '0.1.0'
__all__ = ['__version__']
