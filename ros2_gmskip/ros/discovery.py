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

"""
The ROS graph for the Cyclone DDS transport: `ros_discovery_info`, as rmw_dds_common defines it.

A ROS 2 node is not a DDS entity: every rmw publishes, per participant, which nodes live in it and
which readers / writers each node owns, on the DDS topic `ros_discovery_info` (no `rt/` prefix),
type `rmw_dds_common::msg::dds_::ParticipantEntitiesInfo_`, reliable, transient local, keep last
1. `ros2 node list`, `rclpy`'s `get_node_names_and_namespaces()` and `ros2 node info` read it;
topics alone come from plain DDS discovery.

Message layout (rmw_dds_common 3.x, Jazzy): `Gid` is `char[16] data` (the 16-byte DDS GUID:
12-byte prefix + entity id, as rmw_cyclonedds_cpp and rmw_fastrtps_cpp copy it), `NodeEntitiesInfo`
is `string<=256 node_namespace, string<=256 node_name, Gid[] reader_gid_seq, Gid[] writer_gid_seq`,
`ParticipantEntitiesInfo` is `Gid gid, NodeEntitiesInfo[] node_entities_info_seq`.
"""

# no `from __future__ import annotations`: cyclonedds resolves the annotations itself
from dataclasses import dataclass, field
import typing
import uuid

from cyclonedds.idl import IdlStruct
from cyclonedds.idl import types

TOPIC = 'ros_discovery_info'
GID_SIZE = 16          # RMW_GID_STORAGE_SIZE since Iron (Humble: 24, zero-padded)


@dataclass
class Gid(IdlStruct, typename='rmw_dds_common::msg::dds_::Gid_'):
    data: types.array[types.uint8, GID_SIZE] = bytes(GID_SIZE)


@dataclass
class NodeEntitiesInfo(IdlStruct, typename='rmw_dds_common::msg::dds_::NodeEntitiesInfo_'):
    node_namespace: types.bounded_str[256] = '/'
    node_name: types.bounded_str[256] = ''
    reader_gid_seq: types.sequence[Gid] = field(default_factory=list)
    writer_gid_seq: types.sequence[Gid] = field(default_factory=list)


@dataclass
class ParticipantEntitiesInfo(IdlStruct,
                              typename='rmw_dds_common::msg::dds_::ParticipantEntitiesInfo_'):
    gid: Gid = field(default_factory=Gid)
    node_entities_info_seq: types.sequence[NodeEntitiesInfo] = field(default_factory=list)


def gid(guid: uuid.UUID) -> Gid:
    """Return the rmw gid of a DDS entity whose GUID cyclonedds gives as a UUID."""
    return Gid(data=guid.bytes)


def participant_info(participant_guid: uuid.UUID, nodes: typing.Sequence[tuple[
        str, str, typing.Sequence[uuid.UUID], typing.Sequence[uuid.UUID]]]
        ) -> ParticipantEntitiesInfo:
    """Return the message for a participant; nodes: (namespace, name, readers, writers)."""
    return ParticipantEntitiesInfo(gid=gid(participant_guid), node_entities_info_seq=[
        NodeEntitiesInfo(node_namespace=ns, node_name=name,
                         reader_gid_seq=[gid(g) for g in readers],
                         writer_gid_seq=[gid(g) for g in writers])
        for ns, name, readers, writers in nodes])


class GraphAnnouncer:
    """Publishes which node, readers and writers a Cyclone DDS participant holds."""

    def __init__(self, participant: typing.Any) -> None:
        from cyclonedds.core import Policy, Qos
        from cyclonedds.pub import DataWriter
        from cyclonedds.topic import Topic

        self.participant = participant
        qos = Qos(Policy.Reliability.Reliable(max_blocking_time=100_000_000),
                  Policy.Durability.TransientLocal, Policy.History.KeepLast(1),
                  Policy.DataRepresentation(use_cdrv0_representation=True))
        self.writer = DataWriter(participant, Topic(participant, TOPIC, ParticipantEntitiesInfo),
                                 qos=qos)

    def announce(self, namespace: str, name: str, readers: typing.Sequence[typing.Any],
                 writers: typing.Sequence[typing.Any]) -> None:
        """Publish the node (`readers` / `writers`: its DDS entities); name '' = no node."""
        nodes = [(namespace, name, [r.guid for r in readers], [w.guid for w in writers])]
        self.writer.write(participant_info(self.participant.guid, nodes if name else []))
