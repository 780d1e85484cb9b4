"""The fleet protocol's bucket objects: the plan, shard leases, done markers and the dataset manifest.

Pure decisions (coverage, what to claim, what the dataset holds) live beside the async calls that apply them,
so the worker (images/fleet) stays a loop of: decide, await, record.
"""
