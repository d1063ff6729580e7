"""Blockchain service (Q.4100 §9.2): transactions on the CoreTree, blocks on a SubMesh.

:mod:`~hp2p.apps.chain.model` (transactions, blocks, hashes, signatures),
:mod:`~hp2p.apps.chain.state` (genesis, accounts), :mod:`~hp2p.apps.chain.mempool` and
:mod:`~hp2p.apps.chain.ledger` (the sans-IO rules: validation, proof of authority, fork choice,
finality) are pure; the node shells run them on hp2p overlays.
"""
