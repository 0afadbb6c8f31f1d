"""Embedding tables, interactions and the CTR models built from them."""
