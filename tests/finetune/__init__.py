"""Tests of warmstart.finetune."""
