"""The cloud, simulated on one machine: a watcher for notifications and a local process for GPU capacity."""
