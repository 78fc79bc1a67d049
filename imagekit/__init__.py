"""imagekit: build, smoke-test and publish Docker images for ML training platforms."""

__version__ = "0.1.0"
