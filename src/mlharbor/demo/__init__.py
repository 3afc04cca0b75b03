"""The demo job behind make run."""
