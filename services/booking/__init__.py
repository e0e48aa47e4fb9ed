"""Booking: the published catalogue and prices, customers, and the booking lifecycle."""
