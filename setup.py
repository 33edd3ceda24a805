# Copyright 2026 ros2_gmskip developers
#
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#
#     http://www.apache.org/licenses/LICENSE-2.0
#
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
# limitations under the License.

"""ament_python package definition: `colcon build` and `pip install -e .` both use it."""

from glob import glob
import os

from setuptools import find_packages, setup

package_name = 'ros2_gmskip'
HERE = os.path.dirname(os.path.realpath(__file__))   # the source folder, also via a symlink


def tree(src: str) -> list[tuple[str, list[str]]]:
    """Return the data_files entries that install a folder tree under share/<package>/<src>."""
    entries = []
    for root, _dirs, files in os.walk(src):
        paths = [os.path.join(root, f) for f in files]
        if paths:
            entries.append((os.path.join('share', package_name, root), paths))
    return entries


def pinned(name: str) -> list[str]:
    """
    Return the requirement lines of the pip requirements file `name` beside this file.

    Read relative to setup.py's real folder, not the working directory: `colcon build
    --symlink-install` runs a symlink to setup.py from build/.
    """
    with open(os.path.join(HERE, name), encoding='utf-8') as f:
        return [line.strip() for line in f if line.strip() and not line.startswith('#')]


setup(
    name=package_name,
    version='0.1.0',
    packages=find_packages(exclude=['test', 'test.*']),
    data_files=[
        ('share/ament_index/resource_index/packages', ['resource/' + package_name]),
        ('share/' + package_name, ['package.xml']),
        ('share/' + package_name + '/launch', glob('launch/*.xml') + glob('launch/*.py')),
        ('share/' + package_name + '/config', glob('config/*.yaml') + glob('config/*.xml')),
        ('share/' + package_name + '/schema', glob('schema/*.json')),
    ] + tree('models'),
    install_requires=pinned('requirements.txt'),
    zip_safe=False,
    maintainer='ros2_gmskip developers',
    maintainer_email='dev@ros2-gmskip.invalid',
    description=(
        'GM-Skip block skipping and token pruning for driving-scene VLMs, with a ROS 2 node.'),
    license='Apache-2.0',
    extras_require={'test': pinned('requirements-test.txt'),
                    'ray': ['ray==2.60.0']},
    entry_points={
        'console_scripts': [
            'ros2-gmskip = ros2_gmskip.cli:main',
            'gmskip_describer = ros2_gmskip.ros.entry:main',
        ],
    },
)
