"""Follow-up: the surveillance rules for small meningiomas (findings, growth,
due dates), the follow-up list and patient flags, and the periodic scheduler.

Stage 5 of the flow: fed by the jobs' findings, read by the CLI and the HTTP API.
"""
