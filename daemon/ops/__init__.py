"""Operations: status report, HTTP status server, Prometheus metrics, systemd notify.

Read-only views of the node for admins and monitoring; never imports the CLI.
"""
