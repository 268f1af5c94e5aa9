"""The packaged app (build/): pytest does not look into folders named build, hence this name."""
