"""The exit-code lines every subcommand's help ends with (docs/certificates.md#exit-codes)."""

#: The exit codes of every subcommand but ``audit``.
EXIT_CODES = "exit codes: 0 ok, 1 failed verification, 2 usage error or unreadable input"
#: ``certun audit`` adds 3 for an audit without power.
AUDIT_EXIT_CODES = ("exit codes: 0 ok, 1 a claim was refuted, 2 usage error or unreadable input, "
                    "3 inconclusive (a control went undetected)")
