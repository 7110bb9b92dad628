"""Data: prepare (text -> shards), shards, labelled files, the held-out split, the demo's shop data set."""
