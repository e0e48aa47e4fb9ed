"""Gateway: the one REST API (/v1) that mobile apps, partner stores and operations call."""
