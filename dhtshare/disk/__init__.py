"""The local disk: hashing files, verified chunk files, the content store, the data dir."""
