"""The gateway benchmark: separate web and worker processes on a real Redis against the fake upstream."""
