"""Dispatcher daemons fed by a store's own bucket notifications (`bucketrun listen`), and what they share with
the local simulation: the inbox reconcile that catches a lost event, the sweep loop, the local launchers."""
