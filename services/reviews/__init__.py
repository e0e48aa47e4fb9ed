"""Reviews: ratings, complaints with deadlines and escalation, technician quality."""
