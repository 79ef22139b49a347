"""Run inside a network namespace by test_multicast_netns.py: a node with only multicast
discovery finds its peer, then the two exchange an overlay datagram.

    python netns_node.py SEED_HEX PEER_KEY_HEX RESULT_PATH
"""

from __future__ import annotations

import json
import sys

import trio

from pinecone_trio import Identity, PublicKey
from pinecone_trio.node import NodeConfig, open_node


async def main(seed_hex: str, peer_hex: str, result_path: str) -> None:
    identity = Identity.from_seed(bytes.fromhex(seed_hex))
    peer = PublicKey.from_hex(peer_hex)
    result: dict[str, object] = {"public_key": identity.public_key.hex(), "ok": False}
    config = NodeConfig(beacon_interval=0.5)
    hello = b"hello from " + identity.public_key.hex().encode()
    try:
        # Bounded as a whole, generously: the other namespace's interpreter may start
        # many seconds later on a loaded machine (the test waits up to 120 s).
        with trio.fail_after(90):
            async with open_node(identity, multicast=True, config=config) as node:
                await node.wait_for(lambda: peer in node.peer_keys())
                status = node.status()
                result["peer_type"] = status["peers"][0]["type"]
                result["zone"] = status["peers"][0]["zone"]
                result["uri"] = status["peers"][0]["uri"]
                result["beacons_received"] = status["multicast"]["beacons_received"]
                got = None
                while got is None:  # both sides send until they hear the other
                    await node.send(peer, hello)
                    with trio.move_on_after(0.2):
                        got = await node.receive()
                result["received"] = got.payload.decode()
                result["from"] = got.source_key.hex()
                # keep answering for a while so the other side hears us too
                with trio.move_on_after(3.0):
                    while True:
                        await node.send(peer, hello)
                        await trio.sleep(0.1)
                result["ok"] = True
    except Exception as exc:  # reported to the test through the result file
        result["error"] = repr(exc)
    await trio.Path(result_path).write_text(json.dumps(result), encoding="utf-8")


if __name__ == "__main__":
    trio.run(main, sys.argv[1], sys.argv[2], sys.argv[3])
