"""Drivers: the protocol every implementation under test follows, and one driver per framework."""
