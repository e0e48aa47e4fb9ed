"""Payments: itemised receipts, prepaid cards and packages, payments and refunds."""
