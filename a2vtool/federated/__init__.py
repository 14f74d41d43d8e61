"""Federated training: node training, aggregation strategies, the round loop, engines."""
