"""Lantern's tests; the folders mirror engine/, viewer/ and build/."""
