"""The Doorstep services; each is laid out the same way (see services/README.md)."""
