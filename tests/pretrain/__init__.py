"""Tests of warmstart.pretrain."""
