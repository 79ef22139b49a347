"""Topic announce/lookup on the snake keyspace (a DHT). See docs/dht.md.

Every node serves it from its start (`node.dht`, unless `NodeConfig(dht=False)`), and
`open_dht(node)` yields that one (or runs one of its own on a node without);
`dht.announce(topic)` makes the node findable under a topic, `dht.lookup(topic)` finds
who announces it. The engine
(`engine.DhtEngine`), store (`store.RecordStore`) and codecs (`wire`) are sans-IO.
"""

from .crypto import topic_id
from .engine import DhtEngine, PeerRecord
from .service import Announcement, Dht, open_dht
from .store import RecordStore

__all__ = [
    "Announcement",
    "Dht",
    "DhtEngine",
    "PeerRecord",
    "RecordStore",
    "open_dht",
    "topic_id",
]
