"""The fleet worker: claims shards of a plan with leases, runs a processor over their items, and commits each
shard as one write-once parquet file under a create-if-absent done marker. See events/fleet/ for the protocol."""
