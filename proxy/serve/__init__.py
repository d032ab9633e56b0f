"""One worker's lifecycle and its request pipeline; worker 0 supervises the others."""
