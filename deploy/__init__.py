"""Deployment: local servers (deploy/local) and container images (deploy/docker)."""
