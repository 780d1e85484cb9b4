"""The bucket layer: the objects bucketrun keeps in a bucket and the contract every bucket backend meets."""
