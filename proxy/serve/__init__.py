"""One worker's lifecycle and its request pipeline, and the supervisor of workers."""
