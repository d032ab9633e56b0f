"""The files regproxy reads, as one immutable snapshot, and their live reload."""
