"""``agentzt bench``: the stack under load against a bare pass-through chain, and the
microbenchmarks of the hot path's parts.

Everything here runs real processes on free loopback ports in a temporary home: the
gateway and client proxy as ``python -m agentzt`` children, the bare chain as two
children of ``agentzt.bench.bare``, and the load generator (``agentzt.bench.loadgen``) as
a process of its own, so no two of them share an event loop or a GIL.
"""
