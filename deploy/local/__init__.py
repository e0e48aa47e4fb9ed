"""Real Kafka and MongoDB as local processes, demo data, and helpers to start them."""
