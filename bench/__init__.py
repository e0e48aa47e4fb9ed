"""Benchmarks with raw Kafka and MongoDB baselines from the same run (`./dev bench`)."""
