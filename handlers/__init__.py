"""Reactions to events: bucket notifications (dispatch), and the command line a person drives."""
