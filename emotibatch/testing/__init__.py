"""Generated stand-in models and sample videos for tests, benchmarks and the offline demo."""
