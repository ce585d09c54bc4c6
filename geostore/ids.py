"""Value types shared by every layer.

NewTypes make a type checker catch a swapped term and index, or a seq passed as an epoch.
"""

from __future__ import annotations

from typing import NewType

NodeId = NewType("NodeId", str)
RegionId = NewType("RegionId", str)
GroupId = NewType("GroupId", str)
StreamName = NewType("StreamName", str)

Term = NewType("Term", int)
LogIndex = NewType("LogIndex", int)
Seq = NewType("Seq", int)
Epoch = NewType("Epoch", int)
PartitionId = NewType("PartitionId", int)

#: A Raft term before any election.
TERM_ZERO = Term(0)
#: The index "before the first entry" of a Raft log (first real entry is 1).
INDEX_ZERO = LogIndex(0)
