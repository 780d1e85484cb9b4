"""The train_window kind: preflight on every host, a bounded training run, a checkpoint gate, verified mirroring."""
