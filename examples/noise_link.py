"""Two nodes talk over a Noise-XX link on 127.0.0.1.

Run:  python examples/noise_link.py

Alice listens on a free TCP port; Bob dials her, expecting her key. Both prove their
ed25519 identities inside the Noise handshake, then Bob sends a message that Alice
echoes back, encrypted. The program exits 0 on its own within a second or two.
"""

from __future__ import annotations

import sys

import trio

from pinecone_trio.identity import Identity
from pinecone_trio.link import PROTOCOL_NAME, NoiseLink, connect_link, serve_links

DEMO_TIMEOUT = 10.0


async def main() -> int:
    alice = Identity.generate()
    bob = Identity.generate()
    print(f"alice  {alice.public_key}")
    print(f"bob    {bob.public_key}")

    async def alice_echo(link: NoiseLink) -> None:
        print(
            f"alice: handshake done, peer is {link.remote_key.short()}…, "
            f"capabilities {sorted(link.remote_capabilities)}"
        )
        while data := await link.receive_some():
            print(f"alice: got {bytes(data)!r}, echoing it")
            await link.send_all(data)

    with trio.fail_after(DEMO_TIMEOUT):
        async with trio.open_nursery() as nursery:
            uri = await nursery.start(serve_links, "tcp://127.0.0.1:0", alice, alice_echo)
            print(f"alice: listening on {uri}")
            link = await connect_link(
                uri, bob, expected_key=alice.public_key, capabilities={"demo/echo"}
            )
            async with link:
                print(f"bob:   {PROTOCOL_NAME.decode()} handshake with {uri} done")
                print(f"bob:   peer proved key {link.remote_key.short()}… (expected alice)")
                print(f"bob:   handshake hash {link.handshake_hash.hex()[:32]}…")
                message = b"hello over Noise"
                await link.send_all(message)
                echoed = b""
                while len(echoed) < len(message):
                    echoed += await link.receive_some()
                print(f"bob:   echo {echoed!r}")
                assert echoed == message
            nursery.cancel_scope.cancel()
    print("done")
    return 0


if __name__ == "__main__":
    sys.exit(trio.run(main))
