"""The city simulator: `./dev sim` (or `./dev up --city`) plays customers, technicians and
stores through the public gateway."""
