"""Turning chat requests into prompts and constraints for local engines."""
