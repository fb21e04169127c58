"""Tests for agentd, and the stand-ins for what cannot be had on a test machine."""
