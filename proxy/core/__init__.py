"""Values every layer uses: file problems, addresses, limits, memory."""
