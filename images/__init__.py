"""What runs on the GPU (or, offline, on the CPU): one package per worker image."""
