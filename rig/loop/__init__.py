"""The daily closed loop: fit, plan, record, analyze, report, simulate, white-box truth."""
