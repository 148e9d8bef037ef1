"""Tests of warmstart.distill."""
