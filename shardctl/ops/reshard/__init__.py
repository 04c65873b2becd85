"""Online resharding: plan, capture, copy, verify, fenced cut-over, clean-up."""
