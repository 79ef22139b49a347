"""A deterministic discrete-event simulator for the router engine.

It drives many `pinecone_trio.router` engines in virtual time over a model of links,
on topologies read from path-list files or made by seeded generators, and measures
convergence, delivery, stretch, table sizes and control traffic against ground truth
computed from the live graph. Run ``python -m pinecone_trio.sim --help``; the method is
in ``docs/simulator.md``.
"""
