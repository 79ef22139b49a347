"""The sans-IO router engine: wire codec, spanning tree, virtual snake, forwarding.

Nothing in this package imports trio. `RouterState` (in `state.py`) takes inputs and
`now` and returns actions; see docs/router.md.
"""
